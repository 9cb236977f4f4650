"""hlo.Program on small hand-written HLO modules: what it counts, and how often."""

import pytest

from jax_dcgan.tools.hlo import Program, shape_bytes

BODY = '''HloModule m, is_scheduled=true, input_output_alias={ {0}: (0, {}, may-alias), {1}: (1, {}, may-alias) }

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

%fused_pad (p: f32[8,16,16,4]) -> f32[8,31,31,4] {
  %p = f32[8,16,16,4]{3,2,1,0} parameter(0)
  %z = f32[] constant(0)
  ROOT %pad.1 = f32[8,31,31,4]{3,2,1,0} pad(%p, %z), padding=0_0_0x0_0_1x0_0_1x0_0_0
}

%body (t: (s32[], f32[8,16,16,4])) -> (s32[], f32[8,16,16,4]) {
  %t = (s32[], f32[8,16,16,4]{3,2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = f32[8,16,16,4]{3,2,1,0} get-tuple-element(%t), index=1
  %w = f32[3,3,2,8]{3,2,1,0} constant({...})
  %conv = (f32[8,16,16,8]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, feature_group_count=2, custom_call_target="__cudnn$convForward"
  %y = f32[8,16,16,8]{3,2,1,0} get-tuple-element(%conv), index=0
  %ar = f32[8,16,16,8]{3,2,1,0} all-reduce-start(%y), replica_groups={{0,1}}, to_apply=%add
  %ard = f32[8,16,16,8]{3,2,1,0} all-reduce-done(%ar)
  ROOT %r = (s32[], f32[8,16,16,4]{3,2,1,0}) tuple(%i, %x)
}

%cond (t: (s32[], f32[8,16,16,4])) -> pred[] {
  %t = (s32[], f32[8,16,16,4]{3,2,1,0}) parameter(0)
  ROOT %c = pred[] constant(true)
}

%rs (q: f32[64]) -> f32[32] {
  %q = f32[64]{0} parameter(0)
  ROOT %s = f32[32]{0} reduce-scatter(%q), replica_groups={{0,1}}, dimensions={0}, to_apply=%add
}

%yes (u: f32[64]) -> f32[64] {
  %u = f32[64]{0} parameter(0)
  ROOT %c1 = f32[64]{0} copy(%u)
}

%no (v: f32[64]) -> f32[64] {
  %v = f32[64]{0} parameter(0)
  ROOT %c2 = f32[64]{0} copy(%v)
}

ENTRY %main (x: f32[8,16,16,4], v: f32[64], b: s32[]) -> f32[8,16,16,4] {
  %x = f32[8,16,16,4]{3,2,1,0} parameter(0)
  %v = f32[64]{0} parameter(1)
  %b = s32[] parameter(2)
  %zero = s32[] constant(0)
  %t0 = (s32[], f32[8,16,16,4]{3,2,1,0}) tuple(%zero, %x)
  %loop = (s32[], f32[8,16,16,4]{3,2,1,0}) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"5"}}
  %free = (s32[], f32[8,16,16,4]{3,2,1,0}) while(%t0), condition=%cond, body=%body
  %branch = f32[64]{0} conditional(%b, %v, %v), branch_computations={%yes, %no}
  %start = ((f32[64]{0}), f32[32]{0}) async-start(%v), calls=%rs
  %done = f32[32]{0} async-done(%start)
  %stuffed = f32[8,31,31,4]{3,2,1,0} fusion(%x), kind=kLoop, calls=%fused_pad
  %w2 = f32[4,4,4,4]{3,2,1,0} constant({...})
  %zconv = (f32[8,28,28,4]{3,2,1,0}, u8[0]{0}) custom-call(%stuffed, %w2), window={size=4x4}, dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convForward"
  ROOT %out = f32[8,16,16,4]{3,2,1,0} get-tuple-element(%loop), index=1
}
'''


def test_counts_follow_loops_branches_and_async_collectives():
    p = Program.read(BODY)
    # The body runs 5 times in the scan-like loop and once in the loop of unknown length.
    assert p.kernels["cudnn_forward"] == 6 + 1 and p.kernels["all-reduce"] == 6
    assert p.unknown_trip_counts == 1
    assert p.in_loop["cudnn_forward"] == 6
    assert p.kernels["copy"] == 2  # each branch of the conditional, once
    assert p.kernels["reduce-scatter"] == 1 and p.collective_bytes["reduce-scatter"] == 64 * 4
    assert p.collective_bytes["all-reduce"] == 6 * shape_bytes("f32[8,16,16,8]")
    assert p.zero_stuffed == 1 and p.aliased_outputs == 2
    # Grouped convolution: every output takes 3 x 3 taps x 2 input features (per group).
    grouped = 2 * 8 * 16 * 16 * 8 * 3 * 3 * 2
    stuffed = 2 * 8 * 28 * 28 * 4 * 4 * 4 * 4
    assert p.flops == pytest.approx(6 * grouped + stuffed)


def test_shape_bytes_of_arrays_and_tuples():
    assert shape_bytes("f32[2,3]{1,0}") == 24
    assert shape_bytes("(bf16[4]{0}, u8[0]{0}, s32[])") == 12
