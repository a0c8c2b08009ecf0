"""``benchmarks/hlo_cost.py`` counts a loop iteration's element operations and bytes as documented.

``protocol_ceiling.py`` builds its ceiling estimate on these counts, so they are checked exactly
on a hand-written HLO module (fusions, a conditional, a nested while with a known trip count, an
in-place update, operands named with and without their types) and on a loop XLA compiled here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from tests._models import load

hc = load("hlo_cost", "benchmarks")

MODULE = """HloModule m, entry_computation_layout={()->()}

%fused_mul_add (p0: f32[8,128], p1: f32[8,128]) -> f32[8,128] {
  %p0 = f32[8,128]{1,0} parameter(0)
  %p1 = f32[8,128]{1,0} parameter(1)
  %c = f32[] constant(3)
  %b = f32[8,128]{1,0} broadcast(%c), dimensions={}
  %m = f32[8,128]{1,0} multiply(%p0, %b)
  ROOT %a = f32[8,128]{1,0} add(%m, %p1)
}

%fused_dus (q0: s32[64,16], q1: s32[1,16], q2: s32[]) -> s32[64,16] {
  %q0 = s32[64,16]{1,0} parameter(0)
  %q1 = s32[1,16]{1,0} parameter(1)
  %q2 = s32[] parameter(2)
  %z = s32[] constant(0)
  %n = s32[1,16]{1,0} negate(%q1)
  ROOT %d = s32[64,16]{1,0} dynamic-update-slice(%q0, %n, %q2, %z)
}

%fused_cheap (r0: s8[32]) -> s8[32] {
  %r0 = s8[32]{0} parameter(0)
  ROOT %x = s8[32]{0} not(%r0)
}

%fused_dear (t0: s8[32]) -> s8[32] {
  %t0 = s8[32]{0} parameter(0)
  %y = s8[32]{0} not(%t0)
  ROOT %w = s8[32]{0} not(%y)
}

%branch_cheap (u0: s8[32]) -> s8[32] {
  %u0 = s8[32]{0} parameter(0)
  ROOT %k1 = s8[32]{0} fusion(%u0), kind=kLoop, calls=%fused_cheap
}

%branch_dear (v0: s8[32]) -> s8[32] {
  %v0 = s8[32]{0} parameter(0)
  ROOT %k2 = s8[32]{0} fusion(s8[32]{0} %v0), kind=kLoop, calls=%fused_dear
}

%inner_body (w0: (s32[], f32[4])) -> (s32[], f32[4]) {
  %w0 = (s32[], f32[4]{0}) parameter(0)
  %g = f32[4]{0} get-tuple-element(%w0), index=1
  %i = s32[] get-tuple-element(%w0), index=0
  %e = f32[4]{0} exponential(%g)
  ROOT %t = (s32[], f32[4]{0}) tuple(%i, %e)
}

%inner_cond (w1: (s32[], f32[4])) -> pred[] {
  %w1 = (s32[], f32[4]{0}) parameter(0)
  ROOT %lt = pred[] constant(true)
}

%body (s: (f32[8,128], f32[8,128], s32[64,16], s32[1,16], s32[], s8[32], s32[], (s32[], f32[4]))) -> (f32[8,128]) {
  %s = (f32[8,128]{1,0}, f32[8,128]{1,0}, s32[64,16]{1,0}, s32[1,16]{1,0}, s32[], s8[32]{0}, s32[], (s32[], f32[4]{0})) parameter(0)
  %x = f32[8,128]{1,0} get-tuple-element(%s), index=0
  %y = f32[8,128]{1,0} get-tuple-element(%s), index=1
  %buf = s32[64,16]{1,0} get-tuple-element(%s), index=2
  %row = s32[1,16]{1,0} get-tuple-element(%s), index=3
  %at = s32[] get-tuple-element(%s), index=4
  %flags = s8[32]{0} get-tuple-element(%s), index=5
  %which = s32[] get-tuple-element(%s), index=6
  %carry = (s32[], f32[4]{0}) get-tuple-element(%s), index=7
  %f1 = f32[8,128]{1,0} fusion(%x, %y), kind=kLoop, calls=%fused_mul_add
  %f2 = s32[64,16]{1,0} fusion(%buf, %row, %at), kind=kLoop, calls=%fused_dus
  %cd = s8[32]{0} conditional(%which, %flags, %flags), branch_computations={%branch_cheap, %branch_dear}
  %cp = f32[8,128]{1,0} copy(%f1)
  %wl = (s32[], f32[4]{0}) while(%carry), condition=%inner_cond, body=%inner_body, backend_config={"known_trip_count":{"n":"5"}}
  ROOT %out = (f32[8,128]{1,0}) tuple(%cp)
}

%cond (c: (f32[8,128], f32[8,128], s32[64,16], s32[1,16], s32[], s8[32], s32[], (s32[], f32[4]))) -> pred[] {
  %c = (f32[8,128]{1,0}, f32[8,128]{1,0}, s32[64,16]{1,0}, s32[1,16]{1,0}, s32[], s8[32]{0}, s32[], (s32[], f32[4]{0})) parameter(0)
  ROOT %tr = pred[] constant(true)
}

ENTRY %main () -> () {
  %init = (f32[8,128]{1,0}, f32[8,128]{1,0}, s32[64,16]{1,0}, s32[1,16]{1,0}, s32[], s8[32]{0}, s32[], (s32[], f32[4]{0})) parameter(0)
  %loop = (f32[8,128]{1,0}) while(%init), condition=%cond, body=%body
  ROOT %r = () tuple()
}
"""


def test_a_hand_written_module_is_counted_as_documented():
    comps = hc.computations(MODULE)
    assert hc.main_loop_body(comps) == "body"
    cost = hc.loop_cost(MODULE)
    kernels = {name: (ops, moved) for name, ops, moved in cost.per_kernel}
    # multiply and add over 1,024 elements (the broadcast of the constant is free); reads two
    # f32[8,128] operands named without types, writes one
    assert kernels["f1"] == (2048.0, 3 * 4096.0)
    # in place: the negate and the update's 16 elements; the [1,16] row and the s32[] index read,
    # the row written (the 4 KiB buffer is not streamed)
    assert kernels["f2"] == (16.0 + 16.0, 2.0 * (64 + 4))
    # the dearer branch (two nots over 32 elements), its operand typed in the text
    assert kernels["k2"] == (64.0, 64.0)
    assert "k1" not in kernels
    # a kernel that is not a fusion: its output's elements, its operand and output bytes
    assert kernels["cp"] == (1024.0, 2 * 4096.0)
    # the nested while: its body's exponential (4 elements, 16 bytes read, 16 written) 5 times
    assert [k for k in cost.per_kernel if k[0] == "e"] == [("e", 20.0, 160.0)]
    assert cost.element_ops == 2048 + 32 + 64 + 1024 + 20
    assert cost.bytes == 3 * 4096 + 2 * 68 + 64 + 2 * 4096 + 160
    # kernel runs: f1, f2, the conditional and its branch's fusion, the copy, the while and its
    # body's one kernel five times
    assert cost.kernels == 11
    assert cost.unknown_trips == 0
    assert cost.by_op["multiply"] == 1024 and cost.by_op["not"] == 64 and cost.by_op["exponential"] == 20


def test_the_roofline_takes_each_kernels_slower_limit():
    cost = hc.Cost(per_kernel=[("a", 100.0, 10.0), ("b", 10.0, 100.0)])
    # a: 100 ops at 10/s = 10 s against 10 B at 5 B/s = 2 s; b: 1 s against 20 s
    assert cost.roofline_s(10.0, 5.0) == pytest.approx(30.0)


def test_a_loop_xla_compiled_here():
    """``x * 3 + y`` on f32[8, 128] ten times: one fusion of 2,048 element ops reading 8 KiB and
    writing 4 KiB, and the loop counter's add (XLA's own kernel, 1 op and 12 bytes)."""
    f = jax.jit(lambda x, y: jax.lax.fori_loop(0, 10, lambda i, x: x * 3.0 + y, x))
    x = jnp.ones((8, 128), jnp.float32)
    cost = hc.loop_cost(f.lower(x, x).compile().as_text())
    big = [k for k in cost.per_kernel if k[1] > 1]
    assert len(big) == 1 and big[0][1:] == (2048.0, 3 * 4096.0)
    assert cost.element_ops <= 2048 + 4 and cost.unknown_trips == 0


def test_a_module_without_a_loop_is_refused():
    with pytest.raises(ValueError, match="no while loop"):
        hc.loop_cost("HloModule m\n\nENTRY %main () -> f32[] {\n  ROOT %c = f32[] constant(1)\n}\n")
