"""Messages, geometry and every static check: errors name the field, the value and the rule."""

from __future__ import annotations

import numpy as np
import pytest

import ascend_jax as aj
from ascend_jax import ConfigError, CubeMsgState


def test_cube_msg_body_matches_the_c_layout():
    d = aj.CUBE_MSG_BODY
    offsets = {n: d.fields[n][1] for n in d.names}
    assert d.itemsize == 64
    assert offsets == {
        "head": 0, "funcID": 2, "skipCnt": 3, "value": 4, "isTransA": 8, "isTransB": 9, "isAtomic": 10,
        "isLast": 11, "tailM": 12, "tailN": 16, "tailK": 20, "aAddr": 24, "bAddr": 32, "cAddr": 40,
        "aGap": 48, "bGap": 56,
    }  # fmt: skip
    assert aj.CUBE_GROUP_MSG_HEAD.itemsize == 2
    assert [int(s) for s in CubeMsgState] == [0, 1, 2, 3]


def test_user_message_types():
    d = aj.message_dtype([("funcID", np.uint8), ("x", np.float32)], size=128)
    assert d.itemsize == 128 and d.names[0] == "head"
    with pytest.raises(ConfigError, match="multiple of 64"):
        aj.message_dtype([("x", np.uint32)])
    with pytest.raises(ConfigError, match="first member must be the CubeGroupMsgHead named 'head'"):
        aj.check_message_dtype(np.dtype([("x", np.uint8, 62), ("head", aj.CUBE_GROUP_MSG_HEAD)]))
    with pytest.raises(ConfigError, match=r"fields.skipCnt = 300: does not fit"):
        aj.pack_message(aj.CUBE_MSG_BODY, {"skipCnt": 300})
    with pytest.raises(ConfigError, match="not a payload field"):
        aj.pack_message(aj.CUBE_MSG_BODY, {"nope": 1})


def test_spec_layout_example():
    # spec §2.3: blockStart=4, blockSize=4, Q=11, S=64 -> A=2, P=6, area 3072 B
    ws = aj.KfcWorkspace()
    g = ws.create_cube_res_group("g", 4, 4, 11)
    assert (g.aic_num, g.aiv_per_aic, g.queues_of_aic(1), g.area_bytes, g.first_aic) == (2, 6, 5, 3072, 2)
    assert [g.slot_addr(0, d) for d in range(4)] == [0, 384, 768, 1152]
    assert [g.slot_addr(5, d) for d in range(4)] == [320, 704, 1088, 1472]
    assert [g.slot_addr(6, d) for d in range(4)] == [1536, 1920, 2304, 2688]
    assert [g.slot_addr(10, d) for d in range(4)] == [1792, 2176, 2560, 2944]
    assert ws.get_kfc_workspace() == 3072
    g2 = ws.create_cube_res_group("h", 8, 2, 3)
    assert g2.base_addr == 3072 and ws.used_bytes == 3072 + 3 * 4 * 64


def test_workspace_image_follows_the_slot_formula():
    k = aj.CubeGroupKernel()
    g = k.create_cube_res_group("g", 4, 4, 11, callback="free")
    for q in range(11):
        a = k.aiv(q)
        a.assign_queue(g, q)
        a.post(g, {"value": 1000 + q})
        a.quit(g)
    r = aj.run_reference(k.compile())
    img = r.workspace_image()
    for q in range(11):
        base = g.slot_addr(q, 1)
        assert img[base] == CubeMsgState.QUIT and img[base + 1] == q % 6
        v = np.frombuffer(img[g.slot_addr(q, 0) + 4 : g.slot_addr(q, 0) + 8].tobytes(), np.uint32)[0]
        assert v == 1000 + q and img[g.slot_addr(q, 0)] == CubeMsgState.FREE


@pytest.mark.parametrize(
    ("args", "field", "rule"),
    [
        ((1, 2, 2), "block_start", "must be even"),
        ((0, 3, 2), "block_size", "must be even"),
        ((0, 0, 2), "block_size", "at least one AIC"),
        ((0, 18, 48), "msg_queue_size", "every AIC needs at least one queue"),  # A=9: P=6, last gets 0
        ((40, 12, 48), "block_size", "exceed the chip's 24 AICs"),
        ((0, 2, 0), "msg_queue_size", "1..255"),
        ((0, 2, 64), "msg_queue_size", "at most 63"),
    ],
)
def test_group_constraints(args, field, rule):
    k = aj.CubeGroupKernel()
    with pytest.raises(ConfigError, match=rule) as e:
        k.create_cube_res_group("g", *args)
    assert e.value.field == f"group[0].{field}"


def test_overlapping_groups_and_duplicate_names():
    k = aj.CubeGroupKernel()
    k.create_cube_res_group("g", 0, 4, 4)
    with pytest.raises(ConfigError, match="overlap group 'g'"):
        k.create_cube_res_group("h", 2, 4, 4)
    with pytest.raises(ConfigError, match="already exists"):
        k.create_cube_res_group("g", 8, 2, 2)


def test_f11_bindings():
    k = aj.CubeGroupKernel()
    g = k.create_cube_res_group("g", 0, 2, 2)
    k.aiv(0).assign_queue(g, 0)
    with pytest.raises(ConfigError, match="already bound by aiv\\[0\\]"):
        k.aiv(1).assign_queue(g, 0)
    with pytest.raises(ConfigError, match="already called assign_queue"):
        k.aiv(0).assign_queue(g, 1)
    with pytest.raises(ConfigError, match=r"must be in 0\.\.1"):
        k.aiv(1).assign_queue(g, 2)
    with pytest.raises(ConfigError, match="before assign_queue"):
        k.aiv(2).alloc_message(g)
    with pytest.raises(ConfigError, match=r"queues \[1\]"):
        k.compile()


def test_alloc_post_pairing_and_wait_offsets():
    k = aj.CubeGroupKernel()
    g = k.create_cube_res_group("g", 0, 2, 2)
    a = k.aiv(0)
    a.assign_queue(g, 0)
    k.aiv(1).assign_queue(g, 1)
    m = a.alloc_message(g)
    assert (m.queue, m.depth) == (0, 0)
    assert a.post_message(m) == 0
    with pytest.raises(ConfigError, match="already posted"):
        a.post_fake_msg(m)
    m2 = a.alloc_message(g)
    assert a.post_fake_msg(m2) == 2  # depth 1 -> offset 1 * P
    with pytest.raises(ConfigError, match="4 x 2 block"):
        a.wait(g, 8)
    a.alloc_message(g)
    with pytest.raises(ConfigError, match="never followed by a post"):
        k.compile()


def test_barrier_checks():
    k = aj.CubeGroupKernel()
    g = k.create_cube_res_group("g", 0, 2, 1)
    with pytest.raises(ConfigError, match="arrive_size"):
        k.group_barrier("b", 0, 2)
    b = k.group_barrier("b", 2, 3)
    assert b.base_addr == 512 and b.workspace_len == 3 * 512  # after 256 B of slots, 512-aligned
    a = k.aiv(0)
    a.assign_queue(g, 0)
    with pytest.raises(ConfigError, match=r"must be in 0\.\.2"):
        a.barrier_wait(b, 3)


SCENARIO = """
name = "x"
[[group]]
name = "g"
block_start = 0
block_size = 2
msg_queue_size = 1
[[aiv]]
block_idx = 0
ops = [{ op = "assign_queue", group = "g", queue = 0 }, { op = "quit", group = "g" }]
"""


@pytest.mark.parametrize(
    ("edit", "field", "rule"),
    [
        (("block_size = 2", "block_size = 3"), "group[0].block_size", "must be even"),
        (('{ op = "quit", group = "g" }', '{ op = "quit", group = "h" }'), "aiv[0].ops[1].group", "no such group"),
        (('{ op = "quit", group = "g" }', '{ op = "jump" }'), "aiv[0].ops[1].op", "must be one of"),
        (("queue = 0 }", "queue = 0, extra = 1 }"), "aiv[0].ops[0].extra", "unknown key"),
        (
            ('{ op = "quit", group = "g" }', '{ op = "post", group = "g", fields = { skipCnt = -1 } }'),
            "aiv[0].ops[1].fields.skipCnt",
            "does not fit",
        ),
        (('name = "x"', 'name = "x"\nchip = "910C"'), "chip", "unknown chip"),
    ],
)
def test_scenario_errors_name_the_field(tmp_path, edit, field, rule):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO.replace(*edit))
    with pytest.raises(ConfigError, match=rule) as e:
        aj.load_scenario(path)
    assert e.value.field == field
    assert field in str(e.value)


def test_scenario_loads(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(SCENARIO)
    program = aj.load_scenario(path)
    assert program.name == "x" and program.queue_of == {(0, 0): 0}


def test_platform_ini_loader(tmp_path):
    from ascend_jax.chips import get_chip, load_platform_ini

    ini = tmp_path / "Ascend910B4.ini"
    ini.write_text(
        "[version]\nSoC_version=Ascend910B4\n[SoCInfo]\ncube_core_cnt=20\nvector_core_cnt=40\nl2_size=100663296\n"
        "[AICoreSpec]\ncube_freq=1500\nl0_c_size=131072\n[AICoreMemoryRates]\nddr_rate=32\nl2_read_rate=110\n"
        "ub_to_ddr_rate=21474836480/680000000\nIntrinsic_data_move_out2l1=64\n[DtypeMKN]\nDefault=16,16,16\nDT_INT8=16,32,16\n"
    )
    chip = load_platform_ini(ini)
    assert (chip.name, chip.aic_num, chip.aiv_num, chip.cube_freq_mhz) == ("Ascend910B4", 20, 40, 1500.0)
    assert chip.rate("ddr_read_rate") == 32.0 and abs(chip.rate("ub_to_ddr_rate") - 31.58) < 0.01
    assert "Intrinsic_data_move_out2l1" not in chip.memory_rates
    assert chip.dtype_mkn["int8"] == (16, 32, 16) and chip.cycles_to_us(1500) == 1.0
    assert get_chip(str(ini)) == chip
    bad = tmp_path / "bad.ini"
    bad.write_text("[SoCInfo]\nvector_core_cnt=40\n")
    with pytest.raises(ConfigError, match=r"bad.ini\[SoCInfo\].cube_core_cnt"):
        load_platform_ini(bad)
    bad.write_text("[SoCInfo]\ncube_core_cnt=twenty\n")
    with pytest.raises(ConfigError, match=r"cube_core_cnt = .twenty.: must be a positive number"):
        load_platform_ini(bad)


def test_every_package_ships_in_the_wheel():
    # pyproject lists packages explicitly (models/ ships as ascend_jax_models): a new subpackage must be added
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    code = {".".join(p.parent.relative_to(root).parts) for p in (root / "ascend_jax").rglob("__init__.py")}
    data_only = {"ascend_jax.scenarios", "ascend_jax_models"}
    assert set(config["packages"]) == code | data_only
    assert config["package-dir"] == {"ascend_jax_models": "models"}


def test_one_set_of_aiv_call_names():
    """The builder's op kinds (AivCall), the scenario's op names and the engine's encoding agree:
    every scenario op that becomes an AIV op is an AivCall, and every AivCall has one OpKind."""
    from ascend_jax.cube_group.program import AivOp
    from ascend_jax.cube_group.status import ENCODED_KIND, AivCall
    from ascend_jax.schema import OP_MODELS

    scenario_only = {"assign_queue", "ub_buffer"}  # binding and UB declarations, not AIV ops
    assert set(OP_MODELS) - scenario_only <= {c.value for c in AivCall}
    assert set(ENCODED_KIND) == set(AivCall)
    assert AivOp(AivCall.POST).kind == "post"  # a StrEnum: the scenario's strings compare equal


def test_fast_call_namespace_holds_the_aiv_call_members():
    from ascend_jax.cube_group.status import CALL, AivCall

    assert all(getattr(CALL, c.name) is c for c in AivCall) and len(vars(CALL)) == len(AivCall)
