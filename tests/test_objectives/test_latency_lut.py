"""latency_lut: each block variant timed once, a candidate predicted as the sum plus a measured
fixed part, the prediction error reported; on torch here and on the fake Qualcomm AI Hub (every
variant's device job in flight together, none paid again in a later run)."""
from __future__ import annotations

import json

import pytest

from nasframe import Architecture, Candidate, Context
from nasframe.plugins import get_plugins
from nasframe_objectives import qai_hub_fake
from nasframe_objectives import latency_lut as lut_module
from nasframe_objectives.latency_lut import LatencyLUT


def _space(name="conv_denoiser", **params):
    return get_plugins().search_spaces.create(name, params or {"input_size": 16})


def test_prediction_is_the_sum_of_the_blocks_plus_the_fixed_part(tmp_path, monkeypatch):
    space = _space()
    ctx = Context(run_dir=tmp_path, quiet=True, seed=2)
    obj = LatencyLUT(options={"warmup": 1, "repeats": 3, "threads": 1}, calibration=2, check=3)
    obj.prepare(space, ctx)
    shape = (1, *space.input_shape)
    variants = {v.key for v in space.latency_variants(shape)}
    # 3 widths x (head, tail, 2 kernels x residual or not)
    assert set(obj.table) == variants and len(variants) == 18
    doc = json.loads((tmp_path / "latency_lut.json").read_text())
    assert doc["table"] == obj.table and doc["fixed_ms"] == obj.fixed_ms
    report = doc["report"]
    assert report["n"] == 3 and len(report["calibration"]) == 2
    for row in report["rows"]:
        assert row["rel_error"] == pytest.approx(abs(row["predicted_ms"] - row["measured_ms"])
                                                 / row["measured_ms"])
    assert report["mean_rel_error"] >= 0 and -1 <= report["kendall_tau"] <= 1
    # the variants and the whole networks were timed in one interleaved set (torch times in
    # this process): 18 variants + 2 + 3 networks
    assert {d["interleaved"] for d in doc["table_details"].values()} == {23}
    arch = Architecture({"depth": 3, "width": 16, "residual_blocks": True, "kernel_0": 5,
                         "kernel_1": 3, "kernel_2": 5, "kernel_3": 3})
    value, prov = obj(Candidate(space, space.canonicalize(arch)), ctx)
    want = (obj.table["head:w16:1x3x16x16"] + 2 * obj.table["block:w16:k5:r1:1x16x16x16"]
            + obj.table["block:w16:k3:r1:1x16x16x16"] + obj.table["tail:w16:1x16x16x16"])
    assert value == pytest.approx(want + obj.fixed_ms)
    assert prov.kind == "proxy" and prov.backend == "latency_lut/torch"
    assert prov.details["parts"] == 5 and prov.details["table_entries"] == 18
    # a later prepare reads the table from the run's cache: the same numbers
    again = LatencyLUT(options={"warmup": 1, "repeats": 3, "threads": 1}, calibration=2, check=3)
    again.prepare(space, ctx)
    assert again.table == obj.table and again.fixed_ms == obj.fixed_ms
    # another release of the space's code (or another runtime) times anew: the cached table
    # is keyed by both
    monkeypatch.setattr(lut_module, "_code_versions", lambda sp: {"nasframe": "9.9.9"})
    newer = LatencyLUT(options={"warmup": 1, "repeats": 3, "threads": 1}, calibration=2, check=3)
    newer.prepare(space, ctx)
    assert newer.table != obj.table
    assert len(list((tmp_path / "cache" / "latency_lut").glob("*.json"))) == 2


def test_hybrid_unet_variants_are_kind_by_stage_shape():
    space = _space("hybrid_unet", preset="tiny", granularity="block", input_size=12)
    shape = (1, 3, 12, 12)                         # padded to 16 inside the network
    keys = [v.key for v in space.latency_variants(shape)]
    assert "transformer:h1:1x8x16x16" in keys and "ssm:h2:1x64x2x2" in keys
    # enc1 (8 ch, 16x16), enc2, enc3, latent, dec3 = enc3, dec2 = enc2, dec1/refine (16 ch, 16x16)
    assert len(keys) == 2 * 5
    teacher = space.reference_architectures()["teacher"]
    parts = space.latency_parts(teacher, shape)
    assert len(parts) == len(space.slots) and all(p.key.startswith("transformer:") for p in parts)


@pytest.mark.slow
def test_on_the_fake_hub_every_variant_is_one_job_in_flight_together(tmp_path, monkeypatch):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({"compile_seconds": 0.5, "profile_seconds": 0.5}))
    monkeypatch.setenv(qai_hub_fake.ENV, str(fake))
    space = _space("conv_denoiser", input_size=16, widths=[8], kernels=[3])
    options = {"poll_every": 0.05, "cache_dir": str(tmp_path / "hub-cache")}
    obj = LatencyLUT(backend="qai_hub", options=options, calibration=1, check=1)
    obj.prepare(space, Context(run_dir=tmp_path / "run1", quiet=True))
    variants = len(space.latency_variants((1, 3, 16, 16)))
    assert variants == 4     # head, block with and without residual, tail
    subs = qai_hub_fake.submissions(fake)
    assert len([s for s in subs if s["kind"] == "compile"]) == variants + 2
    jobs = sorted((j for j in qai_hub_fake.jobs(fake) if j["kind"] == "compile"),
                  key=lambda j: j["created"])
    first = jobs[:variants]
    # every variant's compile job was submitted before any of them was seen finished
    assert max(j["created"] for j in first) < min(j["seen_finished"] for j in first)
    assert obj.device(None) == "Samsung Galaxy S25 (Family) (Qualcomm AI Hub)"
    us = {s["job_id"]: s["latency_us"] for s in subs if s["kind"] == "profile"}
    assert sorted(obj.table.values()) == sorted(
        us[j] / 1e3 for j in list(us)[:variants])
    # another run: the table comes from the hub cache, no job paid again
    again = LatencyLUT(backend="qai_hub", options=options, calibration=1, check=1)
    again.prepare(space, Context(run_dir=tmp_path / "run2", quiet=True))
    assert len(qai_hub_fake.submissions(fake)) == len(subs)
    assert again.table == obj.table
