"""`cogql replicate init/build/push`: config.toml validated (config), every model's files found
(sources), one Cog project rendered per model from templates/ and written without clobbering
(build, project), and the image pushed (push)."""

__all__: list[str] = []  # its modules are the interface
