"""Media repository: storage backends, upload checks, thumbnails and URL previews."""
