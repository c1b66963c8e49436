"""Deploying to Replicate: `build` turns config.toml into Cog projects, `predictor` serves a
model inside one (LMTP over Cog, compatible with LMQL's Replicate models)."""
