"""The AutoFIS recipe end to end: the bundle's program computes only the kept pairs, and
the report scores them against the planted interactions."""

import json

from serving.bundle.verify import load_bundle


def test_the_served_program_holds_only_the_kept_pairs(tiny_run):
    _, _, out, report = tiny_run("autofis_synthetic")
    decisions = json.loads((out / "decisions.json").read_text())
    kept = decisions["interactions"]
    assert 0 < len(kept) < decisions["details"]["searched"]  # the tiny search closes some gates, not all
    program = load_bundle(out / "bundle").models[0]
    index = dict(program.named_buffers())["pair_index"]
    fields = list(decisions["clusters"][0]["fields"])  # model field order = the spec's
    assert index.shape == (2, len(kept))
    assert [[fields[i], fields[j]] for i, j in index.T.tolist()] == [i["fields"] for i in kept]
    assert report["interactions"]["kept"] == len(kept)
    assert report["planted"]["planted"] == 2 and report["planted"]["kept"] == len(kept)
