"""The project's `.cog/openapi_schema.json`.

The Cog CLI writes this file into the image at build time; the prediction server (coglet) reads
it to validate inputs and, through `x-cog-streaming`, to allow server-sent events. Without it a
project runs under the bare server with no validation and no streaming, so the build writes it:
the same document `cog build` derives from predict.py (an OpenAPI 3.0.2 spec whose Input is one
required string, `ops_batch_json`, and whose Output is a concatenate iterator of strings, as in
LMQL's Replicate models). Tests check it against Cog's own inspection of the generated file.
"""

from __future__ import annotations

import json
from typing import Any

from ...lmtp.messages import ENGINE_CAPABILITIES, advertise

OPS_BATCH_DESCRIPTION = (
    "JSON array of LMTP ops, [[TYPE, payload], ...] with TYPE GENERATE, SCORE or MODEL_INFO; "
    "the output streams one 'TOKEN {...}' or 'MSG {...}' line per event. "
    + advertise(ENGINE_CAPABILITIES)
)

_STATUS = ["starting", "processing", "succeeded", "canceled", "failed"]


def openapi_schema(version: str) -> dict[str, Any]:
    ref = "#/components/schemas/"
    prediction_post: dict[str, Any] = {
        "summary": "Predict",
        "operationId": "predict_predictions_post",
        "x-cog-streaming": True,
        "requestBody": {
            "content": {"application/json": {"schema": {"$ref": ref + "PredictionRequest"}}}
        },
        "responses": {
            "200": {
                "description": "Successful Response",
                "content": {"application/json": {"schema": {"$ref": ref + "PredictionResponse"}}},
            },
            "422": {
                "description": "Validation Error",
                "content": {"application/json": {"schema": {"$ref": ref + "HTTPValidationError"}}},
            },
        },
    }
    return {
        "openapi": "3.0.2",
        "info": {"title": "Cog", "version": version},
        "paths": {
            "/": {"get": {"summary": "Root", "operationId": "root__get"}},
            "/health-check": {"get": {"summary": "Healthcheck", "operationId": "healthcheck"}},
            "/predictions": {"post": prediction_post},
            "/predictions/{prediction_id}/cancel": {
                "post": {
                    "summary": "Cancel",
                    "operationId": "cancel_predictions__prediction_id__cancel_post",
                    "parameters": [
                        {
                            "name": "prediction_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "title": "Prediction ID"},
                        }
                    ],
                }
            },
        },
        "components": {
            "schemas": {
                "Input": {
                    "type": "object",
                    "title": "Input",
                    "required": ["ops_batch_json"],
                    "properties": {
                        "ops_batch_json": {
                            "type": "string",
                            "title": "Ops Batch Json",
                            "description": OPS_BATCH_DESCRIPTION,
                            "x-order": 0,
                        }
                    },
                },
                "Output": {
                    "type": "array",
                    "title": "Output",
                    "items": {"type": "string"},
                    "x-cog-array-type": "iterator",
                    "x-cog-array-display": "concatenate",
                },
                "PredictionRequest": {
                    "type": "object",
                    "title": "PredictionRequest",
                    "properties": {
                        "id": {"type": "string", "title": "Id"},
                        "input": {"$ref": ref + "Input"},
                        "webhook": {"type": "string", "format": "uri", "title": "Webhook"},
                        "webhook_events_filter": {
                            "type": "array",
                            "items": {"enum": ["start", "output", "logs", "completed"]},
                        },
                    },
                },
                "PredictionResponse": {
                    "type": "object",
                    "title": "PredictionResponse",
                    "properties": {
                        "id": {"type": "string", "title": "Id"},
                        "input": {"$ref": ref + "Input"},
                        "output": {"$ref": ref + "Output"},
                        "status": {"$ref": ref + "Status"},
                        "error": {"type": "string", "title": "Error"},
                        "logs": {"type": "string", "title": "Logs", "default": ""},
                        "metrics": {"type": "object", "title": "Metrics"},
                    },
                },
                "Status": {
                    "type": "string",
                    "title": "Status",
                    "enum": _STATUS,
                    "description": "An enumeration.",
                },
                "HTTPValidationError": {
                    "type": "object",
                    "title": "HTTPValidationError",
                    "properties": {
                        "detail": {
                            "type": "array",
                            "title": "Detail",
                            "items": {"$ref": ref + "ValidationError"},
                        }
                    },
                },
                "ValidationError": {
                    "type": "object",
                    "title": "ValidationError",
                    "required": ["loc", "msg", "type"],
                    "properties": {
                        "loc": {
                            "type": "array",
                            "title": "Location",
                            "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                        },
                        "msg": {"type": "string", "title": "Message"},
                        "type": {"type": "string", "title": "Error Type"},
                    },
                },
            }
        },
    }


def render(version: str) -> str:
    return json.dumps(openapi_schema(version), indent=2) + "\n"
