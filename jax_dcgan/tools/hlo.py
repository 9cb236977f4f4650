"""What a compiled XLA program does, read from its optimised HLO text (no JAX needed).

`Program.read(compiled.as_text())` lists the kernels a device runs per call, with
how often each runs (a `lax.scan` body runs its trip count times), and sorts them
into the kinds that decide a GPU step's speed:

  convolutions   by the cuDNN call each became (forward, backward-input,
                 backward-filter, fused bias-activation), any left to XLA's own
                 emitter, and those fed by a zero-stuffed input (a pad with
                 interior padding: an input-dilated convolution that no library
                 kernel took, jax-ml/jax#31662)
  matrix products cuBLAS calls and Triton GEMM fusions
  collectives    all-reduce, all-gather, ... with the bytes each device contributes
  host transfers host callbacks, infeed/outfeed, send/recv, host-memory copies
  other kernels  XLA's fusions and copies

FLOPs are counted as multiply-adds x 2 of every convolution and dot (a
convolution's from its forward form, whatever pass the call computes); bytes as
what each kernel reads and writes in full. Both are per call of the program.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

__all__ = ["Program", "xla_costs"]

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
               "f8e4m3fn": 1, "f8e5m2": 1, "token": 0}
ARRAY = re.compile(r"\b([a-z]+[0-9a-z]*)\[([0-9,]*)\]")
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*")
COMPUTATION = re.compile(r"^(ENTRY\s+)?%(\S+)\s.*\{\s*$")
CONV_CALLS = {"__cudnn$convForward": "cudnn_forward",
              "__cudnn$convBackwardInput": "cudnn_backward_input",
              "__cudnn$convBackwardFilter": "cudnn_backward_filter",
              "__cudnn$convBiasActivationForward": "cudnn_bias_activation"}
GEMM_CALLS = ("__cublas$gemm", "__cublas$lt$matmul")
GEMM_KINDS = ("cublas_gemm", "triton_gemm", "cudnn_gemm_fusion", "custom_gemm_fusion", "xla_dot")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
               "collective-broadcast", "ragged-all-to-all")
HOST_OPS = ("send", "recv", "infeed", "outfeed", "host-compute")
HOST_CALLS = ("xla_python_gpu_callback", "xla_ffi_python_gpu_callback",
              "xla_python_cpu_callback", "xla_ffi_python_cpu_callback", "tpu_custom_call_host")
# Instructions that launch nothing: bookkeeping and control flow (and, by their `-done`
# suffix, the second half of async pairs, whose start is counted).
NOT_KERNELS = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call",
               "conditional", "after-all", "add-dependency", "opt-barrier", "domain",
               "partition-id", "replica-id", "async-update"}


def shape_bytes(shape: str) -> int:
    """Bytes of a shape's arrays (all elements of a tuple)."""
    return sum(DTYPE_BYTES.get(dtype, 4) * math.prod(map(int, filter(None, dims.split(","))))
               for dtype, dims in ARRAY.findall(shape))


def shape_dims(shape: str) -> list[list[int]]:
    """The dimensions of each array in a shape (one list for an array, several for a tuple)."""
    return [[int(d) for d in dims.split(",") if d] for _, dims in ARRAY.findall(shape)]


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One instruction of a compiled program's HLO text."""
    name: str
    shape: str           # the result's shape, e.g. "f32[128,4,4,512]{3,2,1,0}" or a tuple
    opcode: str
    operands: tuple[str, ...]
    attributes: str      # everything after the operands

    def attribute(self, name: str) -> str | None:
        found = re.search(rf"\b{re.escape(name)}=(%?[^\s,]+(?:\{{[^}}]*\}})?)", self.attributes)
        return found.group(1) if found else None

    @property
    def target(self) -> str:
        """A custom call's target ('' for other instructions)."""
        found = re.search(r'custom_call_target="([^"]+)"', self.attributes)
        return found.group(1) if found else ""


def _split_top(text: str, start: int) -> tuple[str, int]:
    """The text inside the parentheses opening at `start` (nested ones kept), and the index
    after the closing one."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i], i + 1
    raise ValueError(f"unbalanced parentheses in {text[:80]!r}")


def parse_instruction(line: str) -> Instruction | None:
    head = INSTRUCTION.match(line)
    if not head:
        return None
    rest = line[head.end():]
    if rest.startswith("("):  # a tuple shape
        inner, end = _split_top(rest, 0)
        shape, rest = f"({inner})", rest[end:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    opcode = re.match(r"[\w-]+", rest)
    if not opcode:
        return None
    operands, end = _split_top(rest, opcode.end())
    names = tuple(re.findall(r"%([^\s,()]+)", operands))
    return Instruction(head.group(1), shape, opcode.group(0), names, rest[end:])


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str, str]:
    """({computation name: instructions}, the entry computation's name, the module's header
    line)."""
    computations: dict[str, list[Instruction]] = {}
    entry, header, current = "", "", None
    for line in text.splitlines():
        header = line if line.startswith("HloModule") else header
        found = None if line.startswith(" ") else COMPUTATION.match(line)
        if found:
            current = computations.setdefault(found.group(2), [])
            entry = found.group(2) if found.group(1) else entry
            continue
        if line.startswith("}"):
            current = None
        instruction = parse_instruction(line) if current is not None else None
        if instruction:
            current.append(instruction)
    if not entry:
        raise ValueError("no ENTRY computation: not the text of an HLO module")
    return computations, entry, header


def trip_count(instruction: Instruction) -> int | None:
    """A while loop's trip count, where XLA knows it (a `lax.scan`'s always is)."""
    found = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', instruction.attributes)
    return int(found.group(1)) if found else None


def called_computations(instruction: Instruction) -> list[str]:
    """The computations a call or conditional runs (every branch of a conditional, so that
    a branch's kernels count once per run: an upper bound)."""
    found = re.findall(r"\b(?:to_apply|calls|true_computation|false_computation)=%([^\s,}]+)",
                       instruction.attributes)
    branches = re.search(r"branch_computations=\{([^}]*)\}", instruction.attributes)
    return found + (re.findall(r"%([^\s,}]+)", branches.group(1)) if branches else [])


def _conv_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    """2 x multiply-adds of the forward convolution a call computes a pass of: output
    elements x window taps x input features per group (padding taps included, as FLOPs of
    a convolution are usually counted)."""
    labels = instruction.attribute("dim_labels")
    if not labels:
        return 0.0
    operands = [shapes.get(name, "") for name in instruction.operands]
    result = instruction.shape
    kind = CONV_CALLS.get(instruction.target, "forward")
    out, kernel = {"cudnn_backward_input": (operands[0], operands[1]),
                   "cudnn_backward_filter": (operands[1], result)}.get(
        kind, (result, operands[1] if len(operands) > 1 else ""))
    kernel_labels = labels.split("_")[1].split("->")[0]
    out_dims, kernel_dims = shape_dims(out), shape_dims(kernel)
    if not out_dims or not kernel_dims:
        return 0.0
    # The kernel's input features are already per group (feature_group_count), so every
    # output element takes the kernel's taps x input features multiply-adds.
    per_output = math.prod(size for label, size in zip(kernel_labels, kernel_dims[0])
                           if label != "o")
    return 2.0 * math.prod(out_dims[0]) * per_output


def _dot_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    contracting = instruction.attribute("lhs_contracting_dims")
    lhs = shape_dims(shapes.get(instruction.operands[0], ""))
    out = shape_dims(instruction.shape)
    if contracting is None or not lhs or not out:
        return 0.0
    dims = [int(d) for d in contracting.strip("{}").split(",") if d]
    return 2.0 * math.prod(out[0]) * math.prod(lhs[0][d] for d in dims)


def _gemm_call_flops(instruction: Instruction, shapes: dict[str, str]) -> float:
    found = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instruction.attributes)
    lhs, out = shape_dims(shapes.get(instruction.operands[0], "")), shape_dims(instruction.shape)
    if not found or not lhs or not out:
        return 0.0
    dims = [int(d.strip('" ')) for d in found.group(1).split(",") if d.strip('" ')]
    return 2.0 * math.prod(out[0]) * math.prod(lhs[0][d] for d in dims)


def _interior_padding(instruction: Instruction) -> bool:
    """A pad that inserts zeros between elements (`lo_hi_interior` with interior > 0)."""
    padding = instruction.attribute("padding") or ""
    return any(len(p.split("_")) == 3 and p.split("_")[2] != "0" for p in padding.split("x"))


def _zero_stuffing(producer: Instruction | None, computations: dict,
                   by_name: dict[str, Instruction]) -> bool:
    """Whether a convolution's operand is an interior pad, or a fusion that contains one
    (through bitcasts and copies)."""
    while producer is not None and producer.opcode in ("bitcast", "copy"):
        producer = by_name.get(producer.operands[0]) if producer.operands else None
    if producer is None:
        return False
    if producer.opcode == "pad":
        return _interior_padding(producer)
    if producer.opcode == "fusion":
        body = computations.get((producer.attribute("calls") or "").lstrip("%"), [])
        return any(i.opcode == "pad" and _interior_padding(i) for i in body)
    return False


@dataclasses.dataclass
class Program:
    """Counts per call of a compiled program; `per_step` divides by the steps it runs."""
    kernels: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    collective_bytes: collections.Counter = dataclasses.field(
        default_factory=collections.Counter)
    flops: float = 0.0
    bytes_accessed: float = 0.0
    zero_stuffed: int = 0       # convolutions fed by an interior-padded input
    host_transfers: int = 0
    aliased_outputs: int = 0    # outputs that reuse a donated input's buffer
    unknown_trip_counts: int = 0  # while loops counted once, their trip count not known
    in_loop: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    @property
    def convolutions(self) -> dict[str, int]:
        kinds = list(CONV_CALLS.values()) + ["xla_convolution", "convolution_fusion"]
        return {kind: self.kernels[kind] for kind in kinds if self.kernels[kind]}

    @property
    def library_calls(self) -> dict[str, int]:
        """Convolutions and matrix products that run as cuDNN, cuBLAS or Triton kernels."""
        kinds = [*CONV_CALLS.values(), "cublas_gemm", "triton_gemm", "cudnn_gemm_fusion"]
        return {kind: self.kernels[kind] for kind in kinds if self.kernels[kind]}

    @property
    def launches(self) -> int:
        return sum(self.kernels.values())

    @property
    def collectives(self) -> int:
        return sum(self.kernels[c] for c in COLLECTIVES)

    @classmethod
    def read(cls, text: str) -> "Program":
        computations, entry, header = parse_module(text)
        program = cls()
        program.aliased_outputs = len(re.findall(r"\{[0-9, ]*\}: \(\d+", header.split(
            "input_output_alias=")[1])) if "input_output_alias=" in header else 0
        program._walk(computations, entry, 1, False)
        return program

    def _walk(self, computations: dict, name: str, times: int, in_loop: bool) -> None:
        instructions = computations.get(name, [])
        by_name = {i.name: i for i in instructions}
        shapes = {i.name: i.shape for i in instructions}
        for instruction in instructions:
            if instruction.opcode == "while":
                n = trip_count(instruction)
                self.unknown_trip_counts += n is None
                n = n or 1
                self._walk(computations, instruction.attribute("body").lstrip("%"), times * n, True)
                self._walk(computations, instruction.attribute("condition").lstrip("%"),
                           times * (n + 1), True)
                continue
            if instruction.opcode in ("call", "conditional"):
                for called in called_computations(instruction):
                    self._walk(computations, called, times, in_loop)
                continue
            kind = self._kind(instruction, computations)
            if kind is None:
                continue
            self.kernels[kind] += times
            if in_loop:
                self.in_loop[kind] += times
            self.bytes_accessed += times * (shape_bytes(instruction.shape) + sum(
                shape_bytes(shapes.get(o, "")) for o in instruction.operands))
            self.flops += times * self._flops(instruction, computations, shapes)
            if kind in COLLECTIVES:
                self.collective_bytes[kind] += times * sum(
                    shape_bytes(shapes.get(o, "")) for o in instruction.operands)
            if kind == "host_transfer":
                self.host_transfers += times
            if kind in CONV_CALLS.values() or kind == "xla_convolution":
                self.zero_stuffed += times * (
                    "lhs_dilate=" in (instruction.attribute("window") or "") or any(
                        _zero_stuffing(by_name.get(o), computations, by_name)
                        for o in instruction.operands))

    @staticmethod
    def _kind(instruction: Instruction, computations: dict) -> str | None:
        op = instruction.opcode
        if op in NOT_KERNELS or op.endswith("-done"):
            return None
        if op == "async-start":  # XLA wraps some collectives: the kind is the wrapped op's
            body = computations.get((instruction.attribute("calls") or "").lstrip("%"), [])
            op = next((i.opcode for i in body if i.opcode in COLLECTIVES), op)
        base = op.removesuffix("-start")
        if base in COLLECTIVES:
            return base
        if op in HOST_OPS or "S(5)" in instruction.shape or instruction.target in HOST_CALLS:
            return "host_transfer"
        if op == "custom-call":
            if instruction.target in CONV_CALLS:
                return CONV_CALLS[instruction.target]
            if instruction.target in GEMM_CALLS:
                return "cublas_gemm"
            return "custom_call"
        if op == "convolution":
            return "xla_convolution"
        if op == "dot":
            return "xla_dot"
        if op == "fusion":
            body = computations.get((instruction.attribute("calls") or "").lstrip("%"), [])
            if "kind=kCustom" in instruction.attributes and any(i.opcode == "dot" for i in body):
                backend = re.search(r'"fusion_backend_config":\{"kind":"([^"]+)"',
                                    instruction.attributes)
                backend = backend.group(1) if backend else ""
                return "triton_gemm" if "triton" in backend else (
                    "cudnn_gemm_fusion" if "cudnn" in backend else "custom_gemm_fusion")
            if any(i.opcode == "convolution" for i in body):
                return "convolution_fusion"  # TPUs fuse convolutions with their neighbours
            return "fusion"
        return op.replace("-", "_")

    @staticmethod
    def _flops(instruction: Instruction, computations: dict, shapes: dict) -> float:
        if instruction.target in CONV_CALLS or instruction.opcode == "convolution":
            return _conv_flops(instruction, shapes)
        if instruction.target in GEMM_CALLS:
            return _gemm_call_flops(instruction, shapes)
        if instruction.opcode == "dot":
            return _dot_flops(instruction, shapes)
        if instruction.opcode == "fusion":
            body = computations.get((instruction.attribute("calls") or "").lstrip("%"), [])
            inner = {i.name: i.shape for i in body}
            return sum(_conv_flops(i, inner) if i.opcode == "convolution" else _dot_flops(i, inner)
                       for i in body if i.opcode in ("convolution", "dot"))
        return 0.0

    def per_step(self, steps: int) -> dict:
        """The counts of one training step, for a program that runs `steps` of them."""
        return {
            "launches": self.launches / steps,
            "convolutions": {k: v / steps for k, v in self.convolutions.items()},
            "zero_stuffed_convolutions": self.zero_stuffed / steps,
            "gemms": {k: self.kernels[k] / steps for k in GEMM_KINDS if self.kernels[k]},
            "fusions": self.kernels["fusion"] / steps,
            "copies": self.kernels["copy"] / steps,
            "collectives": {k: self.kernels[k] / steps for k in COLLECTIVES if self.kernels[k]},
            "collective_bytes": sum(self.collective_bytes.values()) / steps,
            "host_transfers": self.host_transfers / steps,
            "unknown_trip_counts": self.unknown_trip_counts,
            "flops": self.flops / steps,
            "bytes_accessed": self.bytes_accessed / steps,
        }


def xla_costs(compiled) -> dict[str, float]:
    """FLOPs and bytes accessed by XLA's own cost analysis of a compiled program, where it
    gives them (CPU and TPU programs; compile-only GPU programs give none)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {name: float(analysis[key]) for name, key in (("flops", "flops"),
                                                         ("bytes_accessed", "bytes accessed"))
            if analysis.get(key, 0) > 0}
