"""Deploying to Replicate: `build` turns config.toml into Cog projects, `predictor` serves a
model inside one (LMTP over Cog, compatible with LMQL's Replicate models)."""

__all__: list[str] = []  # its modules are the interface: build, predictor, emulator, ...
