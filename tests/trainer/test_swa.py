"""SWA: snapshots, averaging state dicts of real tiny BERTs (and a RoBERTa), the last-K holder."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertForMaskedLM, BertForSequenceClassification

from tests.conftest import make_tiny_bert
from trainer.swa import LastK, average_state_dicts, snapshot


def classifier(seed: int, persistent_ids: bool = False) -> BertForSequenceClassification:
    model = make_tiny_bert(seed=seed)
    if persistent_ids:
        # transformers 5 keeps position_ids/token_type_ids out of the state dict
        # (non-persistent); older checkpoints and other models save such integer buffers,
        # so make them persistent here to exercise the integer path on a real model.
        emb = model.bert.embeddings
        for name in ("position_ids", "token_type_ids"):
            emb.register_buffer(name, getattr(emb, name), persistent=True)
    return model


def masked_lm(seed: int) -> BertForMaskedLM:
    return make_tiny_bert(seed=seed, masked_lm=True)


DECODER = "cls.predictions.decoder.weight"
EMBEDDINGS = "bert.embeddings.word_embeddings.weight"


def test_snapshot_is_a_detached_cpu_copy() -> None:
    model = classifier(0)
    state = snapshot(model)
    assert state.keys() == model.state_dict().keys()
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    assert not torch.equal(state["classifier.weight"], model.classifier.weight)
    assert all(t.device.type == "cpu" and not t.requires_grad for t in state.values())


def test_snapshot_keeps_tied_weights_shared() -> None:
    state = snapshot(masked_lm(0))
    assert state[DECODER] is state[EMBEDDINGS]
    assert (
        state[DECODER].data_ptr() != masked_lm(0).bert.embeddings.word_embeddings.weight.data_ptr()
    )


def test_average_of_identical_states_is_exact() -> None:
    state = snapshot(classifier(0))
    averaged = average_state_dicts([state, state, state])
    assert averaged.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(averaged[name], tensor), name
        assert averaged[name] is not tensor


def test_average_of_two_is_elementwise_mean_and_keeps_integer_buffers() -> None:
    first, second = classifier(0, persistent_ids=True), classifier(1, persistent_ids=True)
    # Make the integer buffers differ so "taken from the last" is observable.
    second.bert.embeddings.token_type_ids.fill_(1)
    a, b = snapshot(first), snapshot(second)
    assert not a["bert.embeddings.position_ids"].is_floating_point()
    averaged = average_state_dicts([a, b])
    for name in a:
        if a[name].is_floating_point():
            expected = ((a[name].double() + b[name].double()) / 2).to(a[name].dtype)
            assert torch.equal(averaged[name], expected), name
            if not torch.equal(a[name], b[name]):
                assert not torch.equal(averaged[name], a[name]), name
        else:
            assert torch.equal(averaged[name], b[name]), name
            assert averaged[name].dtype == b[name].dtype


def test_batchnorm_counter_is_taken_from_the_last_state() -> None:
    # A real integer buffer that legitimately differs between epochs.
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    states = []
    for _ in range(3):
        model(torch.randn(8, 3))
        states.append(snapshot(model))
    averaged = average_state_dicts(states)
    assert averaged["1.num_batches_tracked"].item() == 3
    expected = torch.stack([s["1.running_mean"] for s in states]).mean(0)
    torch.testing.assert_close(averaged["1.running_mean"], expected)


def test_bf16_is_averaged_in_higher_precision() -> None:
    torch.manual_seed(0)
    states = [{"w": (1.0 + 0.01 * torch.randn(4096)).to(torch.bfloat16)} for _ in range(8)]
    averaged = average_state_dicts(states)["w"]
    reference = torch.stack([s["w"].double() for s in states]).mean(0).to(torch.bfloat16)
    assert averaged.dtype == torch.bfloat16
    assert torch.equal(averaged, reference)
    # Accumulating in bf16 itself would not match: the check above can tell them apart.
    naive = states[0]["w"].clone()
    for s in states[1:]:
        naive += s["w"]
    assert not torch.equal(naive / len(states), reference)


def test_average_loads_back_strictly_into_the_model() -> None:
    averaged = average_state_dicts([snapshot(classifier(0)), snapshot(classifier(1))])
    model = classifier(2)
    model.load_state_dict(averaged, strict=True)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, averaged[name]), name
    logits = model(input_ids=torch.tensor([[1, 5, 7, 2]])).logits
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()


def test_tied_weights_survive_averaging_and_loading() -> None:
    states = [snapshot(masked_lm(seed)) for seed in (0, 1)]
    averaged = average_state_dicts(states)
    assert averaged[DECODER] is averaged[EMBEDDINGS]
    model = masked_lm(2)
    model.load_state_dict(averaged, strict=True)
    decoder = model.cls.predictions.decoder.weight
    embeddings = model.bert.embeddings.word_embeddings.weight
    assert decoder is embeddings or decoder.data_ptr() == embeddings.data_ptr()
    assert torch.equal(embeddings, averaged[EMBEDDINGS])


def test_mismatched_or_empty_inputs_raise_naming_the_key() -> None:
    state = snapshot(classifier(0))
    with pytest.raises(ValueError, match="no state dicts"):
        average_state_dicts([])
    fewer = {k: v for k, v in state.items() if k != "classifier.bias"}
    with pytest.raises(ValueError, match="'classifier.bias'"):
        average_state_dicts([state, fewer])
    with pytest.raises(ValueError, match="'classifier.bias'"):
        average_state_dicts([fewer, state])
    reshaped = {**state, "classifier.weight": torch.zeros(3, 32)}
    with pytest.raises(ValueError, match="'classifier.weight'"):
        average_state_dicts([state, reshaped])


def test_last_k_keeps_the_newest_snapshots() -> None:
    model = classifier(0)
    held = LastK(2)
    seen = []
    for epoch in (1.0, 2.0, 3.0):
        with torch.no_grad():
            model.classifier.bias.fill_(epoch)
        held.add(model, epoch=epoch)
        seen.append(snapshot(model))
    assert len(held) == 2 and held.epochs == [2.0, 3.0]
    averaged = held.average()
    assert torch.equal(averaged["classifier.bias"], torch.full((4,), 2.5))
    assert torch.equal(averaged["classifier.weight"], seen[-1]["classifier.weight"])


def test_last_k_rejects_bad_use() -> None:
    with pytest.raises(ValueError, match="k=0"):
        LastK(0)
    with pytest.raises(ValueError, match="no snapshots"):
        LastK(3).average()


def tiny_roberta(seed: int, masked: bool = False) -> nn.Module:
    """A 32-wide RoBERTa like `backbone build --arch roberta` makes (one token type)."""
    from transformers import RobertaConfig, RobertaForMaskedLM, RobertaForSequenceClassification

    config = RobertaConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=66,
        type_vocab_size=1,
        pad_token_id=0,
        num_labels=4,
    )
    torch.manual_seed(seed)
    return (RobertaForMaskedLM if masked else RobertaForSequenceClassification)(config)


def test_roberta_states_average_by_name_with_their_ties() -> None:
    # No `bert.` prefix anywhere: a RoBERTa averages and loads back like a BERT, and its
    # masked-LM head's two ties (decoder weight = embeddings, decoder bias = head bias) hold.
    states = [snapshot(tiny_roberta(seed, masked=True)) for seed in (0, 1)]
    averaged = average_state_dicts(states)
    embeddings = "roberta.embeddings.word_embeddings.weight"
    assert all(key.startswith(("roberta.", "lm_head.")) for key in averaged)
    assert averaged["lm_head.decoder.weight"] is averaged[embeddings]
    assert averaged["lm_head.decoder.bias"] is averaged["lm_head.bias"]
    expected = (states[0][embeddings].double() + states[1][embeddings].double()) / 2
    assert torch.equal(averaged[embeddings], expected.float())
    model = tiny_roberta(2, masked=True)
    model.load_state_dict(averaged, strict=True)
    assert torch.equal(model.lm_head.decoder.weight, averaged[embeddings])
    classifiers = [snapshot(tiny_roberta(seed)) for seed in (0, 1)]
    model = tiny_roberta(2)
    model.load_state_dict(average_state_dicts(classifiers), strict=True)
    assert {"classifier.dense.weight", "classifier.out_proj.weight"} <= set(classifiers[0])
    logits = model(input_ids=torch.tensor([[2, 5, 7, 3]])).logits
    assert logits.shape == (1, 4) and torch.isfinite(logits).all()
