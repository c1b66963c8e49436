"""What runs a model under Cog: the LMTP predictor a generated predict.py delegates to, the
names and model arguments a project holds for it (layout, modelargs), and real Cog servers
started on loopback, isolated where the kernel allows (cogserver, cogbridge)."""

__all__: list[str] = []  # its modules are the interface
