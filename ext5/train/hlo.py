"""What a compiled (post-optimisation, SPMD-partitioned) HLO module does per step, read from its text.

XLA's own `cost_analysis()` counts every computation once, so the body of a `while` loop (scanned layers,
microbatches) is counted once instead of once per iteration: for an 8-layer scanned T5 it reports a
quarter of the real FLOPs. This module parses the HLO text, finds each loop's trip count in its
condition, and weights every instruction by how often it runs. It counts:

* matmul FLOPs: `dot` and `convolution` (TPU lowers dot_general to convolutions), with XLA's own formula
  (valid window positions only);
* collectives: count, bytes and the bytes each device sends over the interconnect, per kind;
* HBM traffic: bytes read and written by the instructions that run outside fusions (a roofline input).

All numbers are per device (the SPMD program runs on every device).
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterable

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
                "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16|c\d+|f8e4m3fn|f8e5m2)\[([\d,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_CALLED = re.compile(r"\b(calls|body|condition|to_apply|true_computation|false_computation)=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
# Instructions that move no data of their own (views, tuples, control).
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "call", "conditional",
               "after-all", "partition-id", "replica-id", "iota", "opt-barrier", "add-dependency",
               "all-gather-done", "all-reduce-done", "collective-permute-done", "async-done", "async-update",
               "copy-done", "send-done", "recv-done"}


@dataclasses.dataclass
class Instr:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attrs: str
    args: str = ""  # the raw text between the opcode's parentheses (a constant's value)


@dataclasses.dataclass
class Computation:
    name: str
    instrs: list[Instr]
    is_entry: bool = False


def shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape string (a tuple's elements summed; layouts ignored)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += n * _DTYPE_BYTES.get(dtype, 4)
    return int(total)


def shape_dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _split_shape(rest: str) -> tuple[str, str]:
    """'(a, b) op(...)' or 'f32[2]{0} op(...)' -> (shape, 'op(...)...')."""
    if rest.startswith("("):
        depth = 0
        for i, ch in enumerate(rest):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                return rest[:i + 1], rest[i + 1:].lstrip()
    i = rest.find(" ")
    return (rest, "") if i < 0 else (rest[:i], rest[i + 1:].lstrip())


def _parse_instr(line: str) -> Instr | None:
    m = _INSTR.match(line)
    if not m:
        return None
    shape, rest = _split_shape(m.group(2))
    p = rest.find("(")
    if p <= 0:
        return None
    opcode = rest[:p].strip()
    depth, end = 0, len(rest)
    for i in range(p, len(rest)):
        depth += rest[i] == "("
        depth -= rest[i] == ")"
        if depth == 0:
            end = i
            break
    operands = re.findall(r"%([\w.\-]+)", rest[p + 1:end])
    return Instr(m.group(1), shape, opcode, operands, rest[end + 1:], rest[p + 1:end])


def parse_module(text: str) -> dict[str, Computation]:
    """Computations of an HLO module's text, by name."""
    comps: dict[str, Computation] = {}
    cur: Computation | None = None
    for line in text.splitlines():
        if cur is None:
            m = _HEADER.match(line)
            if m and not line.startswith(" "):
                cur = Computation(m.group(2), [], is_entry=bool(m.group(1)))
            continue
        if line.strip() == "}":
            comps[cur.name] = cur
            cur = None
            continue
        ins = _parse_instr(line)
        if ins is not None:
            cur.instrs.append(ins)
    return comps


def _trip_count(instr: Instr, comps: dict[str, Computation]) -> int:
    """A while loop's trip count: XLA's known_trip_count when present, else the bound `i < N` in its
    condition (jax's scan and fori_loop count up from 0 by 1)."""
    m = _TRIP.search(instr.attrs)
    if m:
        return int(m.group(1))
    cond = re.search(r"condition=%?([\w.\-]+)", instr.attrs)
    comp = comps.get(cond.group(1)) if cond else None
    if comp is None:
        return 1
    consts = {i.name: i for i in comp.instrs if i.opcode == "constant"}
    for i in comp.instrs:
        if i.opcode == "compare" and "direction=LT" in i.attrs:
            for op in i.operands:
                if op in consts and re.fullmatch(r"-?\d+", consts[op].args.strip()):
                    return max(int(consts[op].args), 1)
    return 1


def multiplicities(comps: dict[str, Computation]) -> tuple[dict[str, int], set[str], dict[str, int]]:
    """How many times each computation runs per step, which computations are fusion bodies or reducers
    (their instructions move no HBM data of their own), and the trip count of each loop body."""
    mult: dict[str, int] = {}
    inner: set[str] = set()
    trips: dict[str, int] = {}
    entry = next((c for c in comps.values() if c.is_entry), None)
    if entry is None:
        return mult, inner, trips
    stack = [(entry.name, 1, 1)]
    while stack:
        name, m, loop_trip = stack.pop()
        mult[name] = mult.get(name, 0) + m
        trips[name] = loop_trip
        for ins in comps[name].instrs:
            trip = _trip_count(ins, comps) if ins.opcode == "while" else 1
            called = [(k, v) for k, v in _CALLED.findall(ins.attrs)]
            b = _BRANCHES.search(ins.attrs)
            if b:
                called += [("branch", n.strip().lstrip("%")) for n in b.group(1).split(",") if n.strip()]
            for kind, callee in called:
                if callee not in comps:
                    continue
                if kind in ("calls", "to_apply") and ins.opcode not in ("call", "async-start"):
                    inner.add(callee)
                in_loop = kind in ("body", "condition")
                stack.append((callee, m * (trip if in_loop else 1), trip if in_loop else loop_trip))
    return mult, inner, trips


def _window(attrs: str) -> dict[str, list[list[int]] | list[int]]:
    m = re.search(r"window=\{([^}]*)\}", attrs)
    out: dict = {}
    if not m:
        return out
    for part in m.group(1).split():
        key, _, val = part.partition("=")
        if key == "pad":
            out[key] = [[int(x) for x in p.split("_")] for p in val.split("x")]
        else:
            out[key] = [int(x) for x in val.split("x")]
    return out


def conv_flops(out_shape: str, lhs_shape: str, rhs_shape: str, attrs: str) -> float:
    """FLOPs of an HLO convolution, as XLA's HloCostAnalysis counts them (valid window positions only)."""
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", attrs)
    if not labels:
        return 0.0
    lhs_l, rhs_l, out_l = labels.groups()
    lhs, rhs, out = shape_dims(lhs_shape), shape_dims(rhs_shape), shape_dims(out_shape)
    if len(lhs) != len(lhs_l) or len(rhs) != len(rhs_l) or len(out) != len(out_l):
        return 0.0
    fgc = int((re.search(r"feature_group_count=(\d+)", attrs) or [0, 1])[1])
    bgc = int((re.search(r"batch_group_count=(\d+)", attrs) or [0, 1])[1])
    win = _window(attrs)
    spatial = sorted(c for c in rhs_l if c.isdigit())
    valid = 1
    for k, d in enumerate(spatial):
        in_size = lhs[lhs_l.index(d)]
        k_size = rhs[rhs_l.index(d)]
        o_size = out[out_l.index(d)]
        stride = win.get("stride", [1] * len(spatial))[k]
        pad_lo = win.get("pad", [[0, 0]] * len(spatial))[k][0]
        ldil = win.get("lhs_dilate", [1] * len(spatial))[k]
        rdil = win.get("rhs_dilate", [1] * len(spatial))[k]
        count = 0
        for o in range(o_size):
            for kk in range(k_size):
                idx = o * stride - pad_lo + kk * rdil
                if idx % ldil == 0 and 0 <= idx // ldil < in_size:
                    count += 1
        valid *= count
    in_feat = lhs[lhs_l.index("f")]
    out_feat = out[out_l.index("f")]
    batch = lhs[lhs_l.index("b")]
    return 2.0 * (in_feat // fgc) * out_feat * (batch // bgc) * valid


def dot_flops(out_shape: str, lhs_shape: str, attrs: str) -> float:
    m = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", attrs)
    lhs = shape_dims(lhs_shape)
    k = math.prod(lhs[int(i)] for i in m.group(1).split(",") if i) if m else 1
    return 2.0 * math.prod(shape_dims(out_shape)) * k


def _group_size(attrs: str, num_devices: int) -> int:
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]", attrs)
    if m:
        return int(m.group(2))
    m = re.search(r"replica_groups=\{\{([\d,]*)\}", attrs)
    if m and m.group(1):
        return len(m.group(1).split(","))
    return num_devices


@dataclasses.dataclass
class CollectiveStats:
    count: int = 0  # executions per step (an op inside a 24-layer loop counts 24 times)
    ops: int = 0  # distinct instructions in the program
    bytes: int = 0  # result bytes per device (the gathered size for all-gather, the input for the rest)
    ici_bytes: int = 0  # bytes each device sends over the interconnect (ring algorithms)

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class HloStats:
    flops: float  # matmul FLOPs per device per step
    hbm_bytes: float  # bytes read + written by unfused instructions, per device per step
    collectives: dict[str, CollectiveStats]
    max_loop_trip: int

    def ici_bytes(self) -> int:
        return sum(c.ici_bytes for c in self.collectives.values())


def _stacked_bytes(shape: str, loop_trip: int) -> float:
    """Bytes of a shape, counting a buffer stacked over the enclosing loop's iterations (leading dim equal
    to the trip count: scanned weights, saved activations) as one iteration's slice."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(shape):
        b = shape_bytes(f"{dtype}[{dims}]")
        lead = dims.split(",")[0] if dims else ""
        total += b / loop_trip if loop_trip > 1 and lead == str(loop_trip) else b
    return total


def _traffic(ins: Instr, shapes: dict[str, str], loop_trip: int = 1) -> float:
    """HBM bytes an unfused instruction reads and writes. A dynamic slice of a stacked (scanned) buffer
    reads only the slice, and a dynamic update writes only the update in place, so neither counts the
    whole stack."""
    out = _stacked_bytes(ins.shape, loop_trip)
    ins_bytes = [_stacked_bytes(shapes.get(o, ""), loop_trip) for o in ins.operands]
    tag = ins.name.replace("_", "-") + " " + ins.opcode
    if "dynamic-update-slice" in tag:
        outs = {_stacked_bytes(f"{d}[{s}]", loop_trip) for d, s in _ARRAY.findall(ins.shape)}
        small = [b for b in ins_bytes if b not in outs]
        return 2.0 * sum(small)
    if "dynamic-slice" in tag:
        return 2.0 * out + sum(b for b in ins_bytes if b <= out)
    return float(out + sum(ins_bytes))


def _collective_kind(opcode: str) -> str | None:
    base = opcode[:-len("-start")] if opcode.endswith("-start") else opcode
    return base if base in COLLECTIVES else None


def analyze(text: str, num_devices: int) -> HloStats:
    """Per-device FLOPs, HBM traffic and collectives of one execution of a compiled HLO module."""
    comps = parse_module(text)
    mult, inner, trips = multiplicities(comps)
    shapes = {i.name: i.shape for c in comps.values() for i in c.instrs}
    # A fusion parameter's shape is declared in its fusion body; that is all we need.
    flops = hbm = 0.0
    colls = {k: CollectiveStats() for k in COLLECTIVES}
    max_trip = 1
    for name, comp in comps.items():
        m = mult.get(name, 0)
        if not m:
            continue
        for ins in comp.instrs:
            op = ins.opcode
            if op == "while":
                max_trip = max(max_trip, _trip_count(ins, comps))
            if op == "convolution" and len(ins.operands) >= 2:
                flops += m * conv_flops(ins.shape, shapes.get(ins.operands[0], ""),
                                        shapes.get(ins.operands[1], ""), ins.attrs)
            elif op == "dot" and ins.operands:
                flops += m * dot_flops(ins.shape, shapes.get(ins.operands[0], ""), ins.attrs)
            kind = _collective_kind(op)
            if kind == "all-reduce" and name.startswith("all-reduce-scatter"):
                # TPU's reduce-scatter: an all-reduce and a dynamic slice fused as "all-reduce-scatter".
                kind = "reduce-scatter"
            if kind:
                in_bytes = sum(shape_bytes(shapes.get(o, "")) for o in ins.operands)
                g = _group_size(ins.attrs, num_devices)
                frac = (g - 1) / g if g > 0 else 0.0
                if kind == "all-gather":
                    nbytes, sent = in_bytes * g, in_bytes * (g - 1)
                elif kind == "reduce-scatter":
                    nbytes, sent = in_bytes, in_bytes * frac
                elif kind == "all-reduce":
                    nbytes, sent = in_bytes, 2 * in_bytes * frac
                elif kind == "all-to-all":
                    nbytes, sent = in_bytes, in_bytes * frac
                else:
                    nbytes, sent = in_bytes, in_bytes
                c = colls[kind]
                c.count += m
                c.ops += 1
                c.bytes += int(m * nbytes)
                c.ici_bytes += int(m * sent)
            if name not in inner and op not in _NO_TRAFFIC:
                hbm += m * _traffic(ins, shapes, trips.get(name, 1))
    return HloStats(flops=flops, hbm_bytes=hbm, collectives=colls, max_loop_trip=max_trip)


def collectives_table(stats: HloStats) -> Iterable[tuple[str, int, int]]:
    """(kind, executions per step, bytes per device per step) rows, for printing."""
    for k, c in stats.collectives.items():
        yield k, c.count, c.bytes
