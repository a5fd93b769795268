"""``python -m hicache_hf3fs.metadata_server``: run the shared page-index service."""

from hicache_hf3fs.metadata.server import main

if __name__ == "__main__":
    main()
