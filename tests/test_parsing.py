"""Drain3 store: JSON round trip, read-only matching, masks."""

from __future__ import annotations

import json

from fusionlog.config import ParseConfig
from fusionlog.constants import UNKNOWN_EVENT
from fusionlog.data.readers import iter_lines
from fusionlog.parsing import TemplateStore


def _hdfs_contents(data_dir, n=2000):
    out = []
    for _, line in iter_lines(data_dir / "loghub2k/HDFS/HDFS_2k.log"):
        out.append(line.split(": ", 1)[1] if ": " in line else line)
    return out[:n]


def test_templates_stable_across_save_load(tmp_path, data_dir):
    lines = _hdfs_contents(data_dir)
    store = TemplateStore("hdfs")
    ids = store.fit(lines)
    path = tmp_path / "drain.json"
    store.save(path)
    loaded = TemplateStore.load(path)
    assert loaded.templates == store.templates
    assert loaded.transform(lines) == ids  # every training line matches its own template again
    raw = json.loads(path.read_text())
    assert "py/object" not in path.read_text()  # plain JSON, not jsonpickle
    assert raw["format_version"] == 1


def test_match_never_mutates_and_flags_unseen(data_dir):
    store = TemplateStore("hdfs")
    store.fit(_hdfs_contents(data_dir, 500))
    before = json.dumps(store.to_dict(), sort_keys=True)
    assert store.match_line("completely new line about kernel panic") == UNKNOWN_EVENT
    store.transform(_hdfs_contents(data_dir))
    assert json.dumps(store.to_dict(), sort_keys=True) == before


def test_masks_make_ids_and_addresses_one_template():
    store = TemplateStore("x")
    a = store.fit_line("Receiving block blk_-123 src: /10.0.0.1:50010 dest: /10.0.0.2:50010")
    b = store.fit_line("Receiving block blk_987 src: /10.9.8.7:1 dest: /10.0.0.3:2")
    c = store.fit_line("instance 3f2b1c7e-1234-4abc-9def-001122334455 took 0x1F ms")
    assert a == b != c
    assert "<:BLK:>" in store.templates[a] and "<:IP:>" in store.templates[a]
    assert "<:UUID:>" in store.templates[c] and "<:HEX:>" in store.templates[c]


def test_parse_settings_exposed():
    loose = TemplateStore("x", ParseConfig(sim_th=0.1))
    strict = TemplateStore("x", ParseConfig(sim_th=0.9))
    lines = ["user alice logged in from web", "user bob logged out from app"]
    assert len(set(loose.fit(lines))) < len(set(strict.fit(lines)))


def test_mac_addresses_are_masked_and_old_drain_states_keep_their_masks(tmp_path, data_dir):
    """Thunderbird's DHCP lines carry one MAC; NUM took its all-digit groups, leaving a template per device."""
    tb = [t for _, t in iter_lines(data_dir / "loghub2k/Thunderbird/Thunderbird_2k.log") if "DHCPACK" in t]
    store = TemplateStore("thunderbird")
    eid = store.fit_line(tb[0].split(": ", 1)[-1])
    assert "<:MAC:>" in store.templates[eid] and "e3:ba:c3" not in store.templates[eid]
    other_device = tb[0].split(": ", 1)[-1].replace("00:11:43:e3:ba:c3", "00:0d:60:9a:1c:f2")
    assert store.match_line(other_device) == eid
    times = TemplateStore("t")  # a clock or a 4-group id is no hardware address
    clock = times.fit_line("retry at 17:41:44 for id 12:34:56:78")
    assert "<:MAC:>" not in times.templates[clock]
    # a Drain state saved before MAC masking (no mask_set) reads with the masks it was trained with
    old = TemplateStore("thunderbird", ParseConfig(mask_set=1))
    old_eid = old.fit_line(tb[0].split(": ", 1)[-1])
    assert "e3:ba:c3" in old.templates[old_eid]
    state = old.to_dict()
    del state["config"]["mask_set"]
    (tmp_path / "drain_state.json").write_text(json.dumps(state))
    back = TemplateStore.load(tmp_path / "drain_state.json")
    assert back.config.mask_set == 1 and back.match_line(tb[0].split(": ", 1)[-1]) == old_eid


def test_ipv6_addresses_are_ips_and_clocks_or_scopes_are_not():
    store = TemplateStore("sshd")
    ids = [store.fit_line(f"Accepted publickey from {a} port 22 ssh2")
           for a in ("10.0.0.1", "2001:db8::1", "fe80:0:0:0:c6b3:1ff:fecd:467f", "::1")]
    assert len(set(ids)) == 1 and "<:IP:>" in store.templates[ids[0]]
    other = store.fit_line("call Bad::Feed at 12:01:43 done")
    assert "Bad::Feed" in store.templates[other] and "<:IP:>" not in store.templates[other]
