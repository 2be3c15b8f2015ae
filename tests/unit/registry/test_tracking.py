"""What the tracking layer records beside counts: which dense index mining searched (a real sqlite
MLflow store, the real progress channel)."""

from __future__ import annotations

import json

from kadet.core import progress
from kadet.core.config import KadetConfig
from kadet.registry import tracking


def test_the_dense_index_is_a_tag_always_and_a_console_line_when_an_approximate_index_was_weighed(tmp_path,
                                                                                                monkeypatch):
    cfg = KadetConfig(work_dir=str(tmp_path))
    events = tmp_path / "events.jsonl"
    monkeypatch.setenv(progress.ENV, str(events))
    ivf = {"kind": "ivf", "documents": 600_000, "nlist": 774, "nprobe": 97, "recall@100_vs_exact": 0.9921,
           "recall_queries": 64, "calibrated": {97: 0.9921}, "recall_target": 0.99}
    refused = {"kind": "exact", "documents": 600_000, "nlist": 774, "calibrated": {97: 0.95, 146: 0.97, 195: 0.98},
               "why": "IVF reached recall@100 0.980 < 0.99 probing 195 of 774 clusters: exact search"}
    small = {"kind": "exact", "documents": 5183}
    ids = {}
    for name, info in (("ivf", ivf), ("refused", refused), ("small", small)):
        with tracking.stage_run(cfg, "mine", f"run-{name}") as run:
            tracking.note_dense_index({"dense": info})
            ids[name] = run.info.run_id
    c = tracking.client(cfg)
    tags = {name: c.get_run(i).data.tags[tracking.DENSE_INDEX_TAG] for name, i in ids.items()}
    assert tags["ivf"] == ("dense: an approximate faiss IVF index over 600,000 documents, 97 of 774 clusters probed: "
                           "recall@100 0.992 against exact search on 64 queries of this run")
    assert tags["refused"] == "dense: exact search over 600,000 documents (" + refused["why"] + ")"
    assert tags["small"] == "dense: exact search over 5,183 documents"
    notes = [json.loads(line)["text"] for line in events.read_text().splitlines() if '"note"' in line]
    assert notes == [tags["ivf"], tags["refused"]]                    # a small corpus: no line
