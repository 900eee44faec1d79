"""Sliced reads (what the weight-Gram pass streams) equal slices of full reads, for every
kind of backing: synthetic dict, safetensors dir (incl. fused tensors, bf16 storage converted
straight into the caller's buffer), gemma norms, random twin."""

import pytest
import torch

from probes.models import open_model
from probes.models.checkpoint import write_checkpoint
from probes.synthetic import get


def rows_into(model, layer, fam, a, b):
    """``read_rows_into`` a buffer that starts poisoned, so rows it fails to write show."""
    rows = model.shape(layer, fam)[0]
    n = (min(b, rows) - a) * (model.weight(layer, fam)[0].numel() if len(model.shape(layer, fam)) > 1 else 1)
    out = torch.full((n,), float("nan"))
    assert model.read_rows_into(layer, fam, a, b, out) is out
    return out


@pytest.mark.parametrize("spec", ["synthetic:tiny-llama", "synthetic:tiny-gemma3",
                                  "random:synthetic:tiny-qwen3", "dir", "gemma3-bf16-dir"])
def test_weight_rows_equal_full_read_slices(spec, tmp_path):
    if spec == "dir":
        write_checkpoint(get("tiny-qwen2"), tmp_path / "m", shards=2)
        spec = str(tmp_path / "m")
    elif spec == "gemma3-bf16-dir":  # bf16 storage and gemma's 1 + w norms on the direct path
        write_checkpoint(get("tiny-gemma3"), tmp_path / "g", shards=2, dtype=torch.bfloat16)
        spec = str(tmp_path / "g")
    model = open_model(spec)
    for fam in model.families:
        full = model.weight(2, fam)
        assert model.shape(2, fam) == tuple(full.shape)
        rows = full.shape[0]
        for a, b in ((0, 1), (3, rows // 2), (rows - 2, rows + 5)):
            assert torch.equal(model.weight_rows(2, fam, a, b), full[a:b])
            assert torch.equal(rows_into(model, 2, fam, a, b), full[a:b].reshape(-1))


def test_weight_rows_of_fused_tensors(tmp_path):
    spec = get("tiny-llama")
    state = dict(spec.state_dict)
    for L in range(spec.config["num_hidden_layers"]):
        p = f"model.layers.{L}."
        state[p + "self_attn.qkv_proj.weight"] = torch.cat(
            [state.pop(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        state[p + "mlp.gate_up_proj.weight"] = torch.cat(
            [state.pop(p + "mlp.gate_proj.weight"), state.pop(p + "mlp.up_proj.weight")])
    write_checkpoint((spec.config, state), tmp_path / "fused")
    fused = open_model(str(tmp_path / "fused"))
    plain = open_model("synthetic:tiny-llama")
    for fam in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
        assert fused.shape(1, fam) == plain.shape(1, fam)
        assert torch.equal(fused.weight_rows(1, fam, 5, 20), plain.weight(1, fam)[5:20])
        assert torch.equal(rows_into(fused, 1, fam, 5, 20), plain.weight(1, fam)[5:20].reshape(-1))


def test_random_row_blocks_compose_to_the_full_draw():
    from probes.models.random_init import ROW_BLOCK, TensorInit, draw, draw_rows
    big = TensorInit(shape=(3 * ROW_BLOCK + 17, 8), kind="normal", std=0.02)
    full = draw("t", big, "s")
    assert full.shape == big.shape and abs(float(full.std()) - 0.02) < 0.002
    for a, b in ((0, 5), (ROW_BLOCK - 3, ROW_BLOCK + 4), (10, 3 * ROW_BLOCK + 17), (700, 701)):
        assert torch.equal(draw_rows("t", big, "s", a, b), full[a:b])


def test_random_draw_is_its_definition_and_out_changes_nothing():
    """A twin's tensor is, by definition, block b's rows = randn from a generator seeded by
    tensor_seed(salt, name#b), times the init's std: pinned here against that sentence (a draw
    that changed its values would silently change every cached twin result). Drawing into
    memory already used (``out=``) gives the same bits."""
    from probes.models.random_init import ROW_BLOCK, TensorInit, draw, draw_rows, tensor_seed
    big = TensorInit(shape=(2 * ROW_BLOCK + 9, 24), kind="normal", std=0.02)
    blocks = []
    for b in range(3):
        gen = torch.Generator().manual_seed(tensor_seed("s", f"t#{b}"))
        rows = min(ROW_BLOCK, big.shape[0] - b * ROW_BLOCK)
        blocks.append(torch.randn((rows, 24), generator=gen, dtype=torch.float32))
    definition = torch.cat(blocks) * 0.02
    assert torch.equal(draw("t", big, "s"), definition)
    used = torch.full(big.shape, float("nan"))
    assert torch.equal(draw("t", big, "s", out=used), definition) and used.data_ptr() == \
        draw("t", big, "s", out=used).data_ptr()
    part = torch.full((ROW_BLOCK + 15, 24), 7.0)
    assert torch.equal(draw_rows("t", big, "s", ROW_BLOCK - 10, 2 * ROW_BLOCK + 5, out=part),
                       definition[ROW_BLOCK - 10:2 * ROW_BLOCK + 5])
    ones = TensorInit(shape=(5,), kind="ones")
    assert torch.equal(draw("n", ones, "s", out=torch.zeros(5)), torch.ones(5))
    with pytest.raises(ValueError, match="float32"):
        draw("t", big, "s", out=torch.empty(big.shape, dtype=torch.bfloat16))
