"""Deploying to Replicate: `deploy` turns config.toml into Cog projects and pushes them, `cog`
hosts a model inside one (the LMTP predictor, compatible with LMQL's Replicate models, and the
running Cog servers), and `emulator` serves Replicate's HTTP API on loopback in front of them."""

__all__: list[str] = []  # its subpackages are the interface: deploy, cog, emulator
