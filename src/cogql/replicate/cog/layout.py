"""Names inside a generated project, shared by the build (which writes them) and the predictor
(which reads them) without either importing the other's heavy dependencies."""

CHECKPOINTS = "checkpoints"  # weights and tokenizer files
MODEL_ARGS = "config.json"  # model arguments (LMQL's name for the file)
VENDOR_DIR = "cogql"  # the vendored cogql package
BUILD_INFO = "BUILD.json"  # inside the vendored package: which cogql source was copied
PUSH_SCRIPT = "push"
