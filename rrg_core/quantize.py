"""Opt-in int8 dynamic quantisation of the report decoder for CPU inference.

The linear layers' weights are stored as int8 and each layer's input is quantised on the fly,
so every decoding step reads a quarter of the weight bytes: the large (paper-size) decoder runs
several times faster on a CPU. The scores shift slightly, so the text can differ from the float
model's; it is therefore never applied by default.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .decoder import ReportDecoder


def quantize_decoder(decoder: ReportDecoder) -> ReportDecoder:
    """An int8 copy of ``decoder`` (in eval mode) for inference on the CPU; ``decoder`` is unchanged."""
    float_copy = copy.deepcopy(decoder).cpu().eval()
    return torch.ao.quantization.quantize_dynamic(float_copy, {nn.Linear}, dtype=torch.qint8)
