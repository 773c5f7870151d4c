"""--device-map / --max-memory: validated before anything loads (one line, exit 2), and a placed model's record
carries its map, weight bytes per device and KV bytes per device (measured equal to the estimate)."""

import json

import pytest

from kvbench.cli.app import main
from kvbench.errors import UserError
from kvbench.measuring.loading.placement import parse_device_map, parse_max_memory
from kvbench.results.cache_fields import by_device


@pytest.mark.parametrize("args, named", [
    (["--device-map", "{not json"], "{not json"),
    (["--device-map", "[1, 2]"], "JSON object"),
    (["--device-map", '{"model": "tpu"}'], "'tpu'"),
    (["--device-map", '{"model": "cuda:7"}'], "'cuda:7'"),
    (["--device-map", "auto", "--max-memory", "cpu"], "'cpu'"),
    (["--device-map", "auto", "--max-memory", "7=1GiB"], "'7'"),
    (["--device-map", "auto", "--max-memory", "cpu=lots"], "'lots'"),
    (["--device-map", "auto", "--max-memory", "cpu=64KiB"], "do not fit"),
    (["--max-memory", "cpu=1GiB"], "--max-memory needs --device-map"),
])
def test_bad_placement_is_refused_in_one_line(tiny_config_file, tmp_path, capsys, args, named):
    code = main(["run", "--model", str(tiny_config_file), "--prompt-len", "16", "--new-tokens", "4",
                 "--out", str(tmp_path / "never"), *args])
    err = capsys.readouterr().err
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never" / "records.jsonl").exists()


def test_parsers():
    assert parse_device_map("balanced") == "balanced"
    assert parse_device_map('{"model.embed_tokens": "cpu", "model.layers": "cpu"}') == {
        "model.embed_tokens": "cpu", "model.layers": "cpu"}
    assert parse_max_memory("cpu=2GiB") == {"cpu": 2 * 2**30}
    with pytest.raises(UserError):
        parse_max_memory("cpu=2GiB,=1")


@pytest.mark.parametrize("device_map", ["auto", '{"": "cpu"}'])
def test_a_placed_model_records_its_map_and_bytes_per_device(tiny_config_file, tmp_path, device_map):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_config_file), "--device", "cpu", "--prompt-len", "8", "--new-tokens", "3",
                 "--batch-size", "2", "--use-cache", "on", "--repeats", "1", "--warmup", "0",
                 "--device-map", device_map, "--max-memory", "cpu=4GiB", "--out", str(out)]) == 0
    record = json.loads((out / "records.jsonl").read_text().splitlines()[0])
    assert record["status"] == "ok" and set(record["device_map"].values()) == {"cpu"}
    assert record["weight_bytes_by_device"] == {"cpu": record["weight_bytes"]}
    assert by_device(record) == {"cpu": record["kv_cache_bytes"]}  # kv_cache_device_cpu_bytes
    assert by_device(record, estimate=True) == {"cpu": record["kv_cache_bytes_estimate"]}
    assert record["kv_cache_bytes"] == record["kv_cache_bytes_estimate"]
