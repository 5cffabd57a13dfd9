"""Dtype names, once: safetensors header tags -> torch dtype names (torch-free, for the light commands)."""

from __future__ import annotations

SAFETENSORS = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
FLOATING = {tag: name for tag, name in SAFETENSORS.items() if "float" in name}  # what a weight's dtype can be
LOADABLE = ("float32", "bfloat16", "float16")  # `dtype` settings a model is loaded or merged in
