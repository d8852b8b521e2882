"""The training benchmark's peer and arithmetic, on tiny shapes (no timings are checked)."""

import torch

from benchmarks import training_throughput
from benchmarks.peers.plain_afm import PlainAFM
from training.model import AFM, AFMConfig


def test_plain_afm_computes_the_projects_afm():
    torch.manual_seed(0)
    ours = AFM(AFMConfig(30, 4, 6, 3)).eval()
    for parameter in ours.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    plain = PlainAFM(30, 4, 6, 3).eval()
    layer_w, layer_h = plain.attention[0], plain.attention[2]
    assert isinstance(layer_w, torch.nn.Linear) and isinstance(layer_h, torch.nn.Linear)
    with torch.no_grad():
        plain.bias.copy_(ours.bias)
        plain.linear.weight.copy_(ours.linear.weight)
        plain.embedding.weight.copy_(ours.embedding.weight)
        layer_w.weight.copy_(ours.attention_w.weight)
        layer_w.bias.copy_(ours.attention_w.bias)
        layer_h.weight.copy_(ours.attention_h.unsqueeze(0))
        plain.projection.weight.copy_(ours.projection.unsqueeze(0))
    index, value = torch.randint(0, 30, (9, 4)), torch.rand(9, 4)
    assert torch.allclose(plain(index, value), ours(index, value).raw, atol=1e-5)


def test_flops_per_row_count_forward_and_twice_backward():
    pairs = 45  # frappe's 10 fields
    assert training_throughput.afm_flops_per_row(64, 8) == 2 * 3 * pairs * 64 * 10


def test_every_contender_trains_and_is_reported(capsys, monkeypatch):
    monkeypatch.setattr(training_throughput, "matmul_gflops", lambda: 1.0)
    results = training_throughput.main(
        ["--threads", "1", "--dims", "4", "--attention-dims", "2", "--batch-sizes", "8", "--no-deepctr",
         "--steps", "1", "--rounds", "1"]
    )  # fmt: skip
    (result,) = results
    assert result["afm_rows_s"] > 0 and result["plain_rows_s"] > 0 and result["fm_rows_s"] > 0
    assert result["afm_over_plain"] == result["afm_rows_s"] / result["plain_rows_s"]
    assert "| 4 | 2 | 8 |" in capsys.readouterr().out
