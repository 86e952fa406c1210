"""The DiT file format: the layout the inferred dimensions imply is the published key list, key for key."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from anima_probe.model import dit_file as ckpt
from anima_probe.model.files import ModelFileError

TSV = Path(__file__).parents[2] / "support" / "anima_checkpoint_keys.tsv"


def test_layout_of_full_config_is_the_published_key_list():
    rows = [line.rstrip("\n").split("\t") for line in TSV.open() if not line.startswith("#")]
    published = {k: tuple(ast.literal_eval(s)) for k, s in rows}
    dit = {k: v for k, v in published.items() if not k.startswith("llm_adapter.")}
    adapter = {k[len("llm_adapter."):]: v for k, v in published.items() if k.startswith("llm_adapter.")}
    c = ckpt.infer_dit_config(dit)
    assert (c.hidden, c.num_blocks, c.num_heads, c.in_channels, c.patch) == (2048, 28, 16, 16, 2)
    assert c == ckpt.ANIMA_DIT and ckpt.infer_adapter_config(adapter) == ckpt.ANIMA_ADAPTER
    assert ckpt.dit_layout(c) == dit
    assert ckpt.adapter_layout(ckpt.ANIMA_ADAPTER) == adapter
    assert len(published) == 685

def test_prefix_is_detected_and_a_foreign_file_is_named():
    keys = ["net.blocks.0.mlp.layer1.weight", "net.x_embedder.proj.1.weight", "net.llm_adapter.embed.weight"]
    assert ckpt.detect_prefix(keys) == "net."
    assert ckpt.detect_prefix([k[len("net."):] for k in keys]) == ""
    with pytest.raises(ModelFileError, match=r"clip\.safetensors: not an Anima/Cosmos DiT file"):
        ckpt.detect_prefix(["text_model.embeddings.token_embedding.weight"], "clip.safetensors")


def test_dimensions_that_do_not_fit_the_patch_equations_are_refused():
    shapes = {"x_embedder.proj.1.weight": (64, 70), "final_layer.linear.weight": (64, 64)}
    with pytest.raises(ModelFileError, match="cannot infer patch size"):
        ckpt.infer_dit_config(shapes, "odd.safetensors")
    with pytest.raises(ModelFileError, match="missing key 'final_layer.linear.weight'"):
        ckpt.infer_dit_config({"x_embedder.proj.1.weight": (64, 68)}, "cut.safetensors")
