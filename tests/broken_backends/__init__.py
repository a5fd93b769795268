"""A gallery of deliberately broken storage backends, for proving the conformance kit.

``reference``: two small correct backends (in memory, and one file per page). ``defects``:
each gallery backend is one of them with one defect, and ``GALLERY`` names the kit check
that must fail it. ``tests/test_kit_catches_broken_backends.py`` runs the kit against all.
"""
