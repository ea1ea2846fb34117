"""The dynamic programme of docs/HSA.md section 5 as Triton kernels, forward and backward.

``dispatch``: whether the kernels can run and take a call; ``plan``: a layout in the kernels'
form and its tiling; ``launch``: buffers and the launches in order; ``kernels``: the kernels;
``function``: the differentiable :func:`hsa_triton`.
"""

from .dispatch import triton_interpreted, triton_unsupported
from .function import hsa_triton
from .launch import KernelLaunch, record_launches
from .plan import TritonPlan, triton_plan

__all__ = [
    "KernelLaunch",
    "TritonPlan",
    "hsa_triton",
    "record_launches",
    "triton_interpreted",
    "triton_plan",
    "triton_unsupported",
]
