import pytest
import torch

from training.model import AFM, AFMConfig, PairLogits, field_pairs

F, K = 5, 6


def random_rows(
    batch: int = 16, num_features: int = 40, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, num_features, (batch, F), generator=generator)
    value = torch.rand(batch, F, generator=generator) + 0.5
    return index, value


def trained_like(attention: bool = True, seed: int = 0) -> AFM:
    """A model with every parameter random (h too), as after training, in eval mode."""
    torch.manual_seed(seed)
    model = AFM(AFMConfig(40, F, K, 4, attention=attention, dropout=0.5))
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    return model.eval()


def test_outputs_have_the_contract_shapes():
    model = trained_like()
    out = model(*random_rows(batch=7))
    pairs = F * (F - 1) // 2
    assert out.raw.shape == (7,)
    assert out.attention.shape == out.pair_contribution.shape == (7, pairs)
    assert out.linear_contribution.shape == (7, F)


def test_pair_order_is_row_major_upper_triangle():
    assert field_pairs(4) == ([0, 0, 0, 1, 1, 2], [1, 2, 3, 2, 3, 3])


def test_attention_is_a_softmax_over_the_pairs_axis():
    out = trained_like()(*random_rows())
    assert torch.allclose(out.attention.sum(1), torch.ones(16), atol=1e-6)
    # a size-1 softmax (the bug in two public implementations) would give all ones
    assert out.attention.std(1).min() > 1e-3
    assert (out.attention < 1).all()


def test_raw_is_bias_plus_linear_plus_pair_contributions():
    model = trained_like()
    out = model(*random_rows())
    total = model.bias + out.linear_contribution.sum(1) + out.pair_contribution.sum(1)
    assert torch.allclose(out.raw, total, atol=1e-5)


def test_pair_contribution_follows_the_equation():
    model = trained_like()
    index, value = random_rows(batch=3)
    out = model(index, value)
    v = model.embedding(index) * value.unsqueeze(-1)
    i, j = field_pairs(F)
    interaction = v[:, i] * v[:, j]
    logits = torch.relu(model.attention_w(interaction)) @ model.attention_h
    expected = torch.softmax(logits, dim=1) * (interaction @ model.projection)
    assert torch.allclose(out.pair_contribution, expected, atol=1e-5)


def test_fm_is_the_classic_factorization_machine():
    model = trained_like(attention=False)
    index, value = random_rows()
    out = model(index, value)
    v = model.embedding(index) * value.unsqueeze(-1)  # (B, F, k)
    # Rendle's identity: sum_{i<j} <v_i, v_j> = 1/2 ((sum_i v_i)^2 - sum_i v_i^2)
    pairwise = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(1)
    linear = (model.linear(index).squeeze(-1) * value).sum(1)
    assert torch.allclose(out.raw, model.bias + linear + pairwise, atol=1e-4)
    assert torch.allclose(out.attention, torch.full_like(out.attention, 1 / 10))


def test_fresh_afm_from_fm_embeddings_predicts_as_the_fm():
    fm = trained_like(attention=False)
    afm = AFM(AFMConfig(40, F, K, 4, attention=True)).eval()
    afm.load_fm_embeddings(fm)
    assert afm.attention_h.abs().sum() == 0  # uniform first softmax
    rows = random_rows()
    assert torch.allclose(afm(*rows).raw, fm(*rows).raw, atol=1e-5)


def test_exact_start_gives_the_attention_network_fm_scale_inputs():
    fm = trained_like(attention=False)
    afm = AFM(AFMConfig(40, F, K, 4, attention=True)).eval()
    fresh = afm.attention_w.weight.detach().clone()
    afm.load_fm_embeddings(fm)
    index, value = random_rows()
    x = value.unsqueeze(-1)
    v_afm, v_fm = afm.embedding(index) * x, fm.embedding(index) * x  # (B, F, k)  v_i x_i
    i, j = afm.pair_i, afm.pair_j
    scaled = afm.attention_w(v_afm[:, i] * v_afm[:, j])  # W (sqrt(P) v_i ⊙ sqrt(P) v_j) / P + b
    unscaled = (v_fm[:, i] * v_fm[:, j]) @ fresh.T + afm.attention_w.bias  # fresh W on FM's pairs
    assert torch.allclose(scaled, unscaled, atol=1e-6)
    assert not torch.allclose(afm.attention_w.weight, fresh)


def test_exact_start_turns_every_attention_unit_on():
    # FM's pair vectors are small next to b (a fresh FM's here), so b's sign decides each unit:
    # one that started with b < 0 would be off on every pair and never learn
    fm = AFM(AFMConfig(40, F, K, 4, attention=False))
    afm = AFM(AFMConfig(40, F, K, 4, attention=True)).eval()
    afm.load_fm_embeddings(fm)
    v = afm.embedding(random_rows()[0])  # (B, F, k)
    hidden = afm.attention_w(v[:, afm.pair_i] * v[:, afm.pair_j])  # (B, P, t)
    assert (hidden > 0).all()


def fm_trained_with_batch_norm() -> AFM:
    """An FM whose batch norm has learnt gamma, beta and running statistics away from 1 and 0."""
    torch.manual_seed(0)
    fm = AFM(AFMConfig(40, F, K, 4, attention=False, dropout=0.2, batch_norm=True))
    optimizer = torch.optim.Adam(fm.parameters(), lr=0.05)
    index, value = random_rows(batch=64)
    target = torch.randn(64)
    for _ in range(30):
        loss = (fm(index, value).raw - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return fm.eval()


def test_batch_norm_folds_into_v_p_and_bias_without_changing_predictions():
    fm = fm_trained_with_batch_norm()
    with torch.no_grad():
        fm.pair_norm.weight[0] = -fm.pair_norm.weight[0]  # a negative scale goes into p's sign
    rows = random_rows(seed=1)
    before = fm(*rows).raw
    v = fm.embedding.weight.detach().clone()
    fm.fold_batch_norm()
    out = fm(*rows)
    assert torch.allclose(out.raw, before, atol=1e-5)
    assert not fm.config.batch_norm and not hasattr(fm, "pair_norm")
    assert not torch.allclose(fm.embedding.weight, v)  # the norm's scale now lives in v
    assert fm.projection[0] == -1 and (fm.projection[1:] == 1).all()
    total = fm.bias + out.linear_contribution.sum(1) + out.pair_contribution.sum(1)
    assert torch.allclose(out.raw, total, atol=1e-5)
    # a checkpoint of the folded model loads into a model built from its saved config
    reloaded = AFM(AFMConfig(**fm.config.to_dict())).eval()
    reloaded.load_state_dict(fm.state_dict())
    assert torch.allclose(reloaded(*rows).raw, before, atol=1e-5)


def test_afm_has_no_batch_norm():
    with pytest.raises(ValueError, match="batch_norm"):
        AFM(AFMConfig(40, F, K, 4, attention=True, batch_norm=True))


def test_exact_start_from_a_folded_fm_predicts_as_the_fm():
    fm = fm_trained_with_batch_norm()
    fm.fold_batch_norm()
    afm = AFM(AFMConfig(40, F, K, 4, attention=True)).eval()
    afm.load_fm_embeddings(fm, start="exact")
    rows = random_rows()
    assert torch.allclose(afm(*rows).raw, fm(*rows).raw, atol=1e-5)


def test_authors_start_copies_v_and_keeps_the_random_attention_network():
    fm = trained_like(attention=False)
    afm = AFM(AFMConfig(40, F, K, 4, attention=True)).eval()
    h = afm.attention_h.detach().clone()
    afm.load_fm_embeddings(fm, start="authors")
    assert torch.equal(afm.embedding.weight, fm.embedding.weight)
    assert torch.equal(afm.attention_h, h) and h.abs().sum() > 0
    assert torch.equal(afm.projection, torch.ones(K))
    # the pair terms start averaged, not summed, so AFM does not predict as the FM yet
    rows = random_rows()
    assert not torch.allclose(afm(*rows).raw, fm(*rows).raw, atol=1e-3)
    with pytest.raises(ValueError, match="start"):
        afm.load_fm_embeddings(fm, start="scaled")


def test_dropout_acts_in_training_only():
    model = trained_like()
    rows = random_rows()
    assert torch.equal(model(*rows).raw, model(*rows).raw)
    model.train()
    assert not torch.equal(model(*rows).raw, model(*rows).raw)


def test_attention_l2_is_the_squared_norm_of_w():
    model = trained_like()
    assert model.attention_l2().item() == pytest.approx(
        model.attention_w.weight.pow(2).sum().item()
    )
    assert trained_like(attention=False).attention_l2().item() == 0.0


def test_bias_starts_at_the_label_mean_as_a_logit_for_ctr():
    model = AFM(AFMConfig(40, F, K, 4))
    model.init_bias(3.5, "rating")
    assert model.bias.item() == pytest.approx(3.5)
    model.init_bias(0.25, "ctr")
    assert torch.sigmoid(model.bias).item() == pytest.approx(0.25)


def reference_forward(
    model: AFM, index: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """The equations with the (B, P, k) pair tensor built and used by every step."""
    v = model.embedding(index) * value.unsqueeze(-1)  # (B, F, k)
    pairs = v[:, model.pair_i] * v[:, model.pair_j]  # (B, P, k)
    linear = model.linear(index).squeeze(-1) * value  # (B, F)
    if model.config.attention:
        logits = torch.relu(model.attention_w(pairs)) @ model.attention_h  # (B, P)
        attention = torch.softmax(logits, dim=1)
    else:
        attention = torch.ones(pairs.shape[:2])
    pooled = (attention.unsqueeze(-1) * pairs).sum(1)  # (B, k)
    raw = model.bias + linear.sum(1) + pooled @ model.projection
    if not model.config.attention:
        attention = attention / attention.shape[1]  # FM reports uniform weights
    pair_contribution = (attention if model.config.attention else 1.0) * (pairs @ model.projection)
    return raw, attention, pair_contribution, linear


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("attention", [True, False])
def test_forward_and_gradients_match_the_pair_tensor_equations(attention, training, monkeypatch):
    model = trained_like(attention=attention, seed=3).train(training)
    model.dropout.p = 0.0  # training mode takes the chunked attention path, without dropout here
    # chunks of 7 rows: the 32 rows take the chunked path and end on a partial chunk
    monkeypatch.setattr(PairLogits, "CHUNK_FLOATS", 7 * 10 * K // torch.get_num_threads())
    index, value = random_rows(batch=32, seed=2)
    out = model(index, value)
    expected = reference_forward(model, index, value)
    for got, want in zip(out, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)

    weights = torch.randn(4, 32, generator=torch.Generator().manual_seed(5))

    def gradients(outputs) -> list[torch.Tensor]:
        loss = sum(
            (w * o.sum(-1) if o.dim() == 2 else w * o).sum()
            for w, o in zip(weights, outputs, strict=True)
        )
        params = [p for p in model.parameters() if p.requires_grad]
        return list(torch.autograd.grad(loss, params, allow_unused=True))

    for got, want in zip(gradients(model(index, value)), gradients(expected), strict=True):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0
        else:
            assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


def test_pair_scatter_lays_the_pairs_above_the_diagonal():
    model = trained_like()
    a = torch.arange(1.0, 11.0).unsqueeze(0)  # (1, P)
    matrix = (a @ model.pair_scatter).view(F, F)
    assert torch.equal(matrix, torch.zeros(F, F).index_put((model.pair_i, model.pair_j), a[0]))
    assert torch.equal(matrix.tril(), torch.zeros(F, F))


def test_pair_logits_backward_is_the_derivative_of_its_forward(monkeypatch):
    monkeypatch.setattr(PairLogits, "CHUNK_FLOATS", 3 * 10 * K // torch.get_num_threads())
    model = trained_like(seed=4).double()
    index, value = random_rows(batch=8, seed=6)
    v = (model.embedding(index) * value.double().unsqueeze(-1)).detach().requires_grad_()
    w, b, h = (p.detach().requires_grad_() for p in model.attention_weights())

    def logits(*inputs: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = PairLogits.apply(inputs[0], model.pair_i, model.pair_j, *inputs[1:])
        return out

    assert torch.autograd.gradcheck(logits, (v, w, b, h))


def test_frozen_embeddings_train_only_the_attention_network_and_p(monkeypatch):
    # 16 rows in chunks of 2: the chunked path, with no gradient for v
    monkeypatch.setattr(PairLogits, "CHUNK_FLOATS", 2 * 10 * K // torch.get_num_threads())
    model = trained_like(seed=7).train()
    model.freeze_fm_parameters()
    before = model.embedding.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.1)
    index, value = random_rows(seed=8)
    assert PairLogits.pays(model.embedding(index), 10)
    model(index, value).raw.pow(2).mean().backward()
    optimizer.step()
    assert model.embedding.weight.grad is None
    assert torch.equal(model.embedding.weight, before)
    assert model.attention_w.weight.grad is not None and model.attention_h.grad is not None
