"""cogql: LMQL queries on models you host — in-process, over LMTP, or on Replicate.

The public names mirror LMQL's (`import cogql as lmql` works for the common API).
"""

from importlib import metadata as _metadata

from . import algorithms
from . import tokenizer as _tokenizer_module
from .api import query, run, run_file, run_in_loop, run_sync
from .constraints.values import ConstraintError
from .errors import CogqlError, DeployError, ModelError, QueryError, RunError, TransportError
from .language.errors import HoleTypeError, QueryCompileError, QuerySyntaxError
from .lmtp.client import LMTPError
from .runtime import variable_decorators as decorators
from .runtime.decoders import DecoderError, NoResultError
from .runtime.events import ModelCall, QueryEvent, QueryFinished, TextAppended, VariableFinished
from .runtime.functions import F, generate, generate_sync, main
from .runtime.lmql_tokenizer import LMQLTokenizer
from .runtime.lmql_tokenizer import TokenizerModule as _TokenizerModule
from .runtime.missing_inputs import InputError
from .runtime.model import (
    Model,
    ModelConfigError,
    get_default_model,
    get_default_scoring_model,
    model,
    set_default_model,
)
from .runtime.query import QueryFunction, query_from_string
from .runtime.result import LMQLResult, QueryResult
from .runtime.scoring import ScoringResult, score, score_sync
from .runtime.streaming import QueryStream, stream
from .runtime.token_by_token import ConstraintUnsatisfiedError
from .runtime.tracing import InferenceCertificate, Tracer, certificate, traced
from .runtime.writers import headless, printing, silent

try:
    __version__ = _metadata.version("cogql")  # cogql's own (compat.__version__ is LMQL's)
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "LLM",
    "CogqlError",
    "ConstraintError",
    "ConstraintUnsatisfiedError",
    "DecoderError",
    "DeployError",
    "F",
    "HoleTypeError",
    "InferenceCertificate",
    "InputError",
    "LMQLQueryFunction",
    "LMQLResult",
    "LMQLTokenizer",
    "LMTPError",
    "Model",
    "ModelCall",
    "ModelConfigError",
    "ModelError",
    "NoResultError",
    "QueryCompileError",
    "QueryError",
    "QueryEvent",
    "QueryFinished",
    "QueryFunction",
    "QueryResult",
    "QueryStream",
    "QuerySyntaxError",
    "RunError",
    "ScoringResult",
    "TextAppended",
    "Tracer",
    "TransportError",
    "VariableFinished",
    "algorithms",
    "certificate",
    "decorators",
    "generate",
    "generate_sync",
    "get_default_model",
    "get_default_scoring_model",
    "headless",
    "main",
    "model",
    "printing",
    "query",
    "query_from_string",
    "run",
    "run_file",
    "run_in_loop",
    "run_sync",
    "score",
    "score_sync",
    "set_default_model",
    "silent",
    "stream",
    "traced",
]

LLM = Model
LMQLQueryFunction = QueryFunction
# `cogql.tokenizer` stays the tokenizer module; calling it is LMQL's `lmql.tokenizer(name)`
_tokenizer_module.__class__ = _TokenizerModule
