"""Alignment stage: LoRA training on the tiny model (loss goes down, top layers only, completion-only loss, a
seeded step budget, the time cap), data mixing, the settings' one source of defaults, and the lora_adapter
asset on a tiny warehouse with a temp MLflow registry."""

import dataclasses
import math
from datetime import datetime

import dagster as dg
import polars as pl
import pytest

from assets.alignment import data, losses, registry, train
from tests.alignment_fixtures import (
    FAST,
    NO_ID,
    QTY_OF,
    SYSTEM,
    YES_ID,
    YES_WORDS,
    episode_rows,
    prompt,
    quantity_prompt,
    toy_rows,
    with_quantity_rows,
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from tests.llm_fixtures import tiny_test_model

    return tiny_test_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def settings(**changes) -> train.LoraTrainSettings:
    """The tiny model's training settings (FAST, 20 steps within one epoch) with some fields changed."""
    return train.LoraTrainSettings(**{**FAST, "max_steps": 20, "epochs": 1.0, **changes})


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    rows = toy_rows(2)
    cfg = settings(max_steps=20, epochs=20.0)
    out = tmp_path_factory.mktemp("adapter")
    return train.train_lora(tiny_model, rows, rows.head(16), cfg, out)


# ----------------------------------------------------------------------------- pure helpers


def test_layers_to_transform():
    assert train.layers_to_transform(30, 8) == [22, 23, 24, 25, 26, 27, 28, 29]
    assert train.layers_to_transform(2, 1) == [1]
    assert train.layers_to_transform(30, 0) is None
    assert train.layers_to_transform(30, 30) is None
    assert train.layers_to_transform(30, 99) is None


def test_mix_forms_shares_and_seed():
    util = pl.DataFrame(
        {
            "episode_id": [f"u{i}" for i in range(40)],
            "form": ["utility"] * 40,
            "prompt": [f"p{i}" for i in range(40)],
            "completion": ["Yes"] * 40,
        }
    )
    lw = pl.DataFrame(
        {
            "episode_id": [f"l{i}" for i in range(30)],
            "form": ["listwise", "quantity"] * 15,
            "prompt": [f"q{i}" for i in range(30)],
            "completion": ["A"] * 30,
        }
    )
    only_util = data.mix_forms(util, lw, ["utility"], 0.5, 0, seed=0)
    assert only_util.height == 40 and set(only_util["form"]) == {"utility"}
    mixed = data.mix_forms(util, lw, ["utility", "listwise"], 0.25, 20, seed=0)
    assert mixed.height == 20
    assert (mixed["form"] == "listwise").sum() == 5  # 25% of 20, from the 15 listwise rows
    assert (mixed["form"] == "utility").sum() == 15
    # all rows at share 0.25: limited by utility 40 -> 40 / 0.75 = 53 rows, 13 listwise-file rows
    everything = data.mix_forms(util, lw, ["utility", "listwise", "quantity"], 0.25, 0, seed=0)
    assert everything.height == 53 and (everything["form"] != "utility").sum() == 13
    again = data.mix_forms(util, lw, ["utility", "listwise"], 0.25, 20, seed=0)
    assert again["prompt"].to_list() == mixed["prompt"].to_list()
    other = data.mix_forms(util, lw, ["utility", "listwise"], 0.25, 20, seed=1)
    assert other["prompt"].to_list() != mixed["prompt"].to_list()
    # listwise only, no utility file at all
    assert data.mix_forms(None, lw, ["listwise"], 0.0, 0, seed=0).height == 15


def test_bad_rows_are_dropped_not_crashing():
    df = pl.DataFrame({"prompt": ["a", None, "", "b"], "completion": ["Yes", "No", "No", None]})
    assert data.sample_rows(df, 0, 0)["prompt"].to_list() == ["a"]
    with pytest.raises(ValueError, match="prompt and completion"):
        data.sample_rows(pl.DataFrame({"text": ["x"]}), 0, 0)


def test_tokenize_pairs_masks_the_answer_token_only(tokenizer):
    rows = pl.DataFrame({"prompt": [prompt("apple", 1), prompt("stone", 2)], "completion": ["Yes", "No"]})
    enc = data.tokenize_pairs(tokenizer, rows, max_length=512)
    for ids, mask, answer in zip(enc["input_ids"], enc["completion_mask"], [YES_ID, NO_ID], strict=True):
        assert sum(mask) == 1 and mask[-1] == 1  # one answer token, last, no EOS appended
        assert ids[-1] == answer
        assert (
            ids[:-1]
            == tokenizer(rows["prompt"][0 if answer == YES_ID else 1], add_special_tokens=False)["input_ids"]
        )
    short = data.tokenize_pairs(tokenizer, rows, max_length=5)
    assert all(
        len(x) == 5 and m[-1] == 1 for x, m in zip(short["input_ids"], short["completion_mask"], strict=True)
    )


# ----------------------------------------------------------------------------- training


def test_loss_goes_down_on_a_memorisable_set(trained):
    curve = [p["loss"] for p in trained.loss_history]
    assert len(curve) >= 5
    assert trained.steps == 20 and trained.examples_seen == 160
    assert curve[-1] < 0.5 * curve[0]
    assert trained.eval_loss < trained.eval_loss_before - 1.0
    # a constant guess of the 50/50 Yes/No split costs ln 2; the trained adapter must beat a random model by far
    assert trained.eval_loss < 3 * math.log(2)
    assert trained.examples_per_sec > 0 and trained.seconds > 0


def test_group_episodes_keeps_complete_episodes(tokenizer):
    rows = episode_rows(4)
    broken = pl.concat(
        [rows, rows.filter(pl.col("episode_id") == "e0").with_columns(episode_id=pl.lit("twice"))]
    )
    broken = broken.filter(~((pl.col("episode_id") == "e1") & (pl.col("completion") == "Yes")))  # no chosen
    g = data.group_episodes(tokenizer, broken, 512)
    assert len(g["input_ids"]) == 4 and all(len(x) == 4 for x in g["input_ids"])  # e0, e2, e3, twice
    for ids, c, (_, ep) in zip(
        g["input_ids"],
        g["chosen"],
        [("", rows.filter(pl.col("episode_id") == e)) for e in ("e0", "e2", "e3", "e0")],
        strict=True,
    ):
        yes_prompt = ep.filter(pl.col("completion") == "Yes")["prompt"][0]
        assert ids[c] == tokenizer(yes_prompt, add_special_tokens=False)["input_ids"]


def test_softmax_loss_trains_the_choice(tiny_model, tmp_path):
    from resources.hf_engine import HFEngine

    rows = episode_rows(16)
    cfg = settings(loss="softmax", learning_rate=1e-3, max_steps=60, epochs=50.0)
    result = train.train_lora(tiny_model, rows, rows, cfg, tmp_path / "a")
    # chance is ln 4 per episode; the trained choice model must be far better on these memorisable episodes
    assert result.eval_loss_before > 0.8 * math.log(4) and result.eval_loss < 0.5 * math.log(4)
    assert result.examples_seen == 60 * 8  # batch 8 prompts = 2 episodes of 4 per step (8 answers)
    engine = HFEngine(tiny_model, adapter_path=str(tmp_path / "a"), progress=False)
    items = [(p[: p.index("<|im_start|>user")], [q[q.index("<|im_start|>user") :] for q in ep["prompt"]])
             for (_, ep) in rows.group_by("episode_id", maintain_order=True) for p in [ep["prompt"][0]]]  # fmt: skip
    utilities = engine.score_many(items, progress=False)
    chosen = [
        ep["completion"].to_list().index("Yes") for _, ep in rows.group_by("episode_id", maintain_order=True)
    ]
    hits = [int(max(range(4), key=lambda i: u[i]) == c) for u, c in zip(utilities, chosen, strict=True)]
    assert sum(hits) >= 11  # chance: 4 of 16


def _scrambled(tiny_model):
    """The tiny model with large random weights (its own init is near zero, so masks would hardly matter)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(tiny_model), dtype=torch.float32, attn_implementation="sdpa"
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for prm in model.parameters():
            prm.copy_(torch.randn(prm.shape, generator=g) * 0.2)
    return model.eval()


def test_time_cosine_factor():
    assert train.time_cosine_factor(0, 60) == 1.0 and train.time_cosine_factor(60, 60) == 0.0
    assert train.time_cosine_factor(30, 60) == pytest.approx(0.5) and train.time_cosine_factor(90, 60) == 0.0
    assert train.time_cosine_factor(5, 0) == 1.0  # no budget: no decay


def test_decay_by_time_lowers_the_learning_rate(tiny_model, tmp_path):
    """With a budget far longer than the run the factor stays near 1; with one that runs out it reaches 0:
    the adapter of a run whose steps all come after the budget equals the initial (zero-update) one."""
    rows = episode_rows(4)
    cfg = settings(max_minutes=1e-6, decay_by_time=True, max_steps=3, epochs=5.0)
    trainer, state = train.build_trainer(tiny_model, rows, None, cfg, tmp_path / "t", train._quiet)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    trainer.train()
    after = {k: v.detach() for k, v in trainer.model.named_parameters() if "lora_B" in k}
    assert all(float((after[k] - before[k]).abs().max()) == 0.0 for k in before)  # lr 0: no update
    cfg2 = settings(decay_by_time=True, max_steps=3, epochs=5.0)
    trainer2, _ = train.build_trainer(tiny_model, rows, None, cfg2, tmp_path / "t2", train._quiet)
    trainer2.train()
    moved = [float(v.detach().abs().max()) for k, v in trainer2.model.named_parameters() if "lora_B" in k]
    assert max(moved) > 0.0


def test_split_prompt_cuts_before_the_last_user_turn():
    pre, suf = data.split_prompt(prompt("apple", 3))
    assert pre == SYSTEM and suf.startswith("<|im_start|>user\nOffer 3") and pre + suf == prompt("apple", 3)
    with pytest.raises(ValueError, match="user turn"):
        data.split_prompt("no turns here")


def test_packed_episode_equals_separate_prompts(tiny_model, tokenizer):
    """Each option's answer position in the packed sequence has the hidden state of its own prompt run alone
    (fp32, 1e-4), and the loss equals the unpacked answer-token loss; a plain causal mask (options seeing each
    other) does not."""
    import torch

    model = _scrambled(tiny_model)
    rows = episode_rows(3)
    packs = data.pack_episodes(tokenizer, rows, 512)
    assert len(packs["input_ids"]) == 3 and all(len(s) == 4 for s in packs["suffix_lens"])
    assert [sum(y) for y in packs["yes"]] == [1, 1, 1]
    batch = losses.packed_collator(tokenizer.pad_token_id)(
        [{k: v[i] for k, v in packs.items()} for i in range(3)]
    )
    with torch.inference_mode():
        packed = losses.packed_answer_hidden(model, batch)
        alone = torch.stack(
            [model.model(input_ids=torch.as_tensor([tokenizer(p, add_special_tokens=False)["input_ids"]]))
             .last_hidden_state[0, -1] for p in rows["prompt"].to_list()]
        )  # fmt: skip
        assert torch.allclose(packed, alone, atol=1e-4, rtol=1e-4)
        causal = dict(batch, attention_mask=None)  # plain causal: later options see the earlier ones
        assert (losses.packed_answer_hidden(model, causal) - alone).abs().max() > 1e-2
        ids = {"Yes": YES_ID, "No": NO_ID}
        logits = model.lm_head(alone)
        target = torch.as_tensor([ids[a] for a in rows["completion"].to_list()])
        expected = torch.nn.functional.cross_entropy(logits, target)
        got = losses.packed_loss(model, batch, YES_ID, NO_ID, softmax=False)
        assert abs(float(got) - float(expected)) < 1e-4


def test_packed_quantity_block_equals_its_own_prompt(tiny_model, tokenizer):
    """An episode's quantity row rides in its pack as one more block: its answer position has the hidden state
    of the quantity prompt run alone (fp32, 1e-4), and the loss adds qty_weight x the cross-entropy over the
    quantity tokens "1".."9" (the distribution the simulation reads)."""
    import torch
    import torch.nn.functional as F

    from assets.prompts.templates import QUANTITY_LABELS
    from resources.hf_engine import answer_token_ids

    model = _scrambled(tiny_model)
    rows = with_quantity_rows(episode_rows(3))
    packs = data.pack_episodes(tokenizer, rows, 512)
    assert packs["qty"] == [QUANTITY_LABELS.index(QTY_OF[w]) for w in YES_WORDS[:3]]
    assert all(n > 0 for n in packs["qty_len"]) and all(len(s) == 4 for s in packs["suffix_lens"])
    batch = losses.packed_collator(tokenizer.pad_token_id)(
        [{k: v[i] for k, v in packs.items()} for i in range(3)]
    )
    q_prompts = rows.filter(pl.col("form") == "quantity")["prompt"].to_list()
    qty_ids = answer_token_ids(tokenizer, q_prompts[0], list(QUANTITY_LABELS))
    with torch.inference_mode():
        hidden = losses._packed_hidden(model, batch)
        got_h = hidden[batch["qty_rows"], batch["qty_cols"]]
        alone = torch.stack(
            [model.model(input_ids=torch.as_tensor([tokenizer(p, add_special_tokens=False)["input_ids"]]))
             .last_hidden_state[0, -1] for p in q_prompts]
        )  # fmt: skip
        assert torch.allclose(got_h, alone, atol=1e-4, rtol=1e-4)
        ce = F.cross_entropy(model.lm_head(alone)[:, qty_ids], torch.as_tensor(packs["qty"]))
        choice = losses.packed_loss(model, batch, YES_ID, NO_ID, softmax=True)
        both = losses.packed_loss(model, batch, YES_ID, NO_ID, softmax=True, qty_ids=qty_ids, qty_weight=0.5)
        assert abs(float(both) - float(choice) - 0.5 * float(ce)) < 1e-4
    no_qty = data.pack_episodes(tokenizer, episode_rows(3), 512)  # no quantity rows: no block, label -1
    assert no_qty["qty_len"] == [0, 0, 0] and no_qty["qty"] == [-1, -1, -1]


def test_packed_training_learns_the_quantity(tiny_model, tmp_path):
    """Trained with the quantity block, the adapter puts the quantity answers' mass on the trained answers
    ("1".."3"; the untrained tiny model puts most of it on "5"); with quantity_weight 0 it does not."""
    import numpy as np

    from assets.prompts.templates import QUANTITY_LABELS
    from resources.hf_engine import HFEngine

    rows = with_quantity_rows(episode_rows(16))
    prompts = [quantity_prompt(w) for w in QTY_OF]
    mass = {}
    for weight in (1.0, 0.0):
        cfg = settings(
            loss="softmax",
            learning_rate=1e-3,
            pack_prefix=True,
            quantity_weight=weight,
            max_steps=60,
            epochs=50.0,
        )
        out = tmp_path / f"a{weight}"
        result = train.train_lora(tiny_model, rows, rows, cfg, out)
        assert result.quantity_episodes == 16 and result.metrics()["quantity_episodes"] == 16
        engine = HFEngine(tiny_model, adapter_path=str(out), progress=False)
        p = np.exp(engine.label_logprobs(prompts, list(QUANTITY_LABELS)))
        mass[weight] = p[:, :3].sum(axis=1)  # P("1") + P("2") + P("3") per word
    assert mass[1.0].min() > 0.9 and mass[0.0].max() < 0.5, mass


def test_dataset_rows_by_episode_with_quantity(tmp_path):
    """Packed training takes every utility row and, with_quantity, the quantity rows of those episodes only;
    the eval rows are whole seeded val episodes with their quantity rows."""
    episodes = with_quantity_rows(episode_rows(6))
    util = episodes.filter(pl.col("form") == "utility")
    lw = pl.concat(
        [episodes.filter(pl.col("form") == "quantity"),
         with_quantity_rows(episode_rows(8)).filter(pl.col("form") == "quantity")
         .with_columns(episode_id=pl.lit("other_") + pl.col("episode_id"))]
    )  # fmt: skip
    files = {}
    for name, df in {"train_utility": util, "train_listwise": lw, "val": episodes}.items():
        files[name] = str(tmp_path / f"{name}.parquet")
        df.write_parquet(files[name])
    rows, evals = data.dataset_rows(files, ["utility"], 0.25, 0, 8, 0, by_episode=True, with_quantity=True)
    assert rows.filter(pl.col("form") == "utility").height == util.height
    q = rows.filter(pl.col("form") == "quantity")
    assert q.height == 6 and set(q["episode_id"]) == set(util["episode_id"])  # not the "other_" ones
    assert evals["episode_id"].n_unique() == 2 and evals.filter(pl.col("form") == "quantity").height == 2
    plain, _ = data.dataset_rows(files, ["utility"], 0.25, 0, 8, 0, by_episode=True)
    assert set(plain["form"]) == {"utility"}


@pytest.mark.parametrize("loss", ["pointwise", "softmax"])
def test_packed_training_learns_the_choice(tiny_model, tokenizer, tmp_path, loss):
    from resources.hf_engine import HFEngine

    rows = episode_rows(16)
    longest = max(
        len(ids) for ids in tokenizer(rows["prompt"].to_list(), add_special_tokens=False)["input_ids"]
    )
    cfg = settings(  # max_length bounds each prompt; a pack of 4 is longer and must not be cut
        loss=loss, learning_rate=1e-3, pack_prefix=True, max_length=longest, max_steps=60, epochs=50.0
    )
    result = train.train_lora(tiny_model, rows, rows, cfg, tmp_path / "a")
    assert result.examples_seen == 60 * 8  # batch 8 answers = 2 packed episodes of 4 per step
    assert result.eval_loss < 0.6 * result.eval_loss_before
    if loss == "pointwise":  # its answers are learnt (the loss above); ranking is the softmax loss's job
        return
    engine = HFEngine(tiny_model, adapter_path=str(tmp_path / "a"), progress=False)
    items = [data.split_prompt(p) for p in rows["prompt"].to_list()]
    by_ep = [(items[i][0], [items[j][1] for j in range(i, i + 4)]) for i in range(0, len(items), 4)]
    utilities = engine.score_many(by_ep, progress=False)
    chosen = [
        ep["completion"].to_list().index("Yes") for _, ep in rows.group_by("episode_id", maintain_order=True)
    ]
    hits = [int(max(range(4), key=lambda i: u[i]) == c) for u, c in zip(utilities, chosen, strict=True)]
    assert sum(hits) >= 11  # chance: 4 of 16


def test_packing_refuses_other_forms(tiny_model, tmp_path):
    rows = episode_rows(2).with_columns(form=pl.lit("listwise"))
    with pytest.raises(ValueError, match="pack_prefix packs utility rows"):
        train.train_lora(tiny_model, rows, None, settings(pack_prefix=True), tmp_path / "a")


def test_softmax_loss_needs_episodes(tiny_model, tmp_path):
    rows = toy_rows(1)  # one option per episode: nothing to compare
    with pytest.raises(ValueError, match="softmax loss: no episode"):
        train.train_lora(tiny_model, rows, None, settings(loss="softmax"), tmp_path / "a")


def test_only_top_layers_get_lora(trained, tiny_model):
    from safetensors.torch import load_file

    keys = list(load_file(str(train.adapter_weights_file(trained.adapter_dir))).keys())
    assert keys and all("lora_" in k for k in keys)
    assert all(".layers.1." in k for k in keys), keys
    assert not any(".layers.0." in k for k in keys)
    projections = {k.split(".layers.1.")[1].split(".lora_")[0] for k in keys}
    assert projections == {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    # trainable = r * (in + out) per projection of the one layer: hidden 64, intermediate 128, r 16
    per_layer = 16 * ((64 + 64) * 4 + (64 + 128) * 2 + (128 + 64))
    assert trained.trainable_params == per_layer
    assert trained.layers_to_transform == [1]


def test_loss_is_on_the_completion_only(tiny_model, tmp_path):
    import torch

    rows = toy_rows(1).head(4)
    cfg = settings(bf16_autocast=False, batch_size=2)
    trainer, _ = train.build_trainer(tiny_model, rows, rows.head(1), cfg, tmp_path / "w", log=print)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    labels, ids = batch["labels"], batch["input_ids"]
    for b in range(2):
        real = [i for i, m in enumerate(batch["attention_mask"][b].tolist()) if m == 1]
        kept = [i for i in range(labels.shape[1]) if labels[b, i] != -100]
        assert kept == [real[-1]]  # the answer token only: prompt and padding are -100
        assert ids[b, real[-1]].item() in (YES_ID, NO_ID)
    # the trainer's eval loss on one row = the cross-entropy of its answer token, computed by hand
    loss = trainer.evaluate()["eval_loss"]
    enc = trainer.eval_dataset[0]["input_ids"]
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc])).logits[0, -2].float()
    manual = -torch.log_softmax(logits, -1)[enc[-1]].item()
    assert loss == pytest.approx(manual, rel=1e-4, abs=1e-4)


def test_adapter_loads_in_the_scoring_engine(trained, tiny_model):
    """The saved adapter, merged by the hf engine, gives the utilities of the unmerged peft model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from resources.hf_engine import HFEngine

    words = ["apple", "stone", "plum"]
    suffixes = [prompt(w, i)[len(SYSTEM) :] for i, w in enumerate(words)]
    engine = HFEngine(tiny_model, adapter_path=trained.adapter_dir, progress=False)
    got = engine.score_options(SYSTEM, suffixes)
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, trained.adapter_dir).eval()
    for u, suffix in zip(got, suffixes, strict=True):
        ids = tok(SYSTEM + suffix, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            logp = torch.log_softmax(peft_model(input_ids=ids).logits[0, -1].float(), -1)
        assert u == pytest.approx((logp[YES_ID] - logp[NO_ID]).item(), abs=1e-3)


def test_settings_have_one_source_of_defaults():
    """LoraTrainSettings has no defaults: LoraAdapterConfig holds every one, and settings_of hands them on."""
    import dataclasses

    from assets.alignment import LoraAdapterConfig

    fields = dataclasses.fields(train.LoraTrainSettings)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
    assert {f.name for f in fields} <= set(LoraAdapterConfig.model_fields)
    assert set(FAST) | {"max_steps", "epochs"} == {f.name for f in fields}  # the fixtures name every field
    s = train.settings_of(LoraAdapterConfig())
    assert (s.loss, s.pack_prefix, s.max_steps, s.max_minutes) == ("softmax", True, 350, 120.0)
    assert s.target_modules == train.LLAMA_PROJECTIONS and not s.decay_by_time
    with pytest.raises(AttributeError):
        train.settings_of(object())  # no field falls back on a default of its own


def test_a_changed_config_default_reaches_the_trainer(tiny_model, tmp_path):
    """Changing a default in LoraAdapterConfig alone changes the trainer built from the config: the LoRA rank
    of the peft model and the loss (trainer class) it trains with."""
    from assets.alignment import LoraAdapterConfig

    class Changed(LoraAdapterConfig):
        lora_r: int = 4
        loss: str = "pointwise"
        pack_prefix: bool = False

    rows = episode_rows(4)
    built = {}
    for name, config in {
        "default": LoraAdapterConfig(top_layers=1),
        "changed": Changed(top_layers=1),
    }.items():
        trainer, _ = train.build_trainer(
            tiny_model, rows, None, train.settings_of(config), tmp_path / name, train._quiet
        )
        built[name] = (trainer.model.peft_config["default"].r, type(trainer).__name__, trainer.args.max_steps)
    # 4 episodes in one epoch: packed, 16 answers / 4 options = 4 episodes a step (1 step); pointwise 16 rows
    assert built["default"] == (16, "PackedSFTTrainer", 1)
    assert built["changed"] == (4, "AnswerHeadSFTTrainer", 1)


def test_same_seed_and_steps_give_the_same_adapter(tiny_model, tmp_path):
    """The step budget with a seed fixes the adapter: two runs (dropout on, packed softmax as by default) give
    the same weights up to floating-point noise and the same steps; another seed gives other weights."""
    from safetensors.torch import load_file

    rows = episode_rows(16)
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        cfg = settings(
            loss="softmax",
            pack_prefix=True,
            lora_dropout=0.2,
            seed=seed,
            max_steps=7,
            epochs=50.0,
            max_minutes=30,
        )
        result = train.train_lora(tiny_model, rows, None, cfg, tmp_path / name)
        weights = load_file(str(train.adapter_weights_file(result.adapter_dir)))
        runs[name] = (result, weights)
    (ra, wa), (rb, wb), (_, wc) = runs["a"], runs["b"], runs["c"]
    assert ra.steps == rb.steps == 7 and ra.stopped_by == rb.stopped_by == "steps"
    assert [p["loss"] for p in ra.loss_history] == pytest.approx(
        [p["loss"] for p in rb.loss_history], abs=1e-5
    )
    assert wa.keys() == wb.keys()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    assert max(float((wa[k] - wc[k]).abs().max()) for k in wa) > 1e-3  # the seed matters


def test_a_stopped_training_resumes_from_its_checkpoint_to_the_same_adapter(
    tiny_model, tmp_path, monkeypatch
):
    """A training killed after its step-4 checkpoint goes on from step 4 when run again with the same
    checkpoint folder, and ends with the adapter of a run that was never stopped (same seed, same steps)."""
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    rows = episode_rows(16)
    cfg = settings(
        loss="softmax", pack_prefix=True, lora_dropout=0.2, seed=3, max_steps=6, epochs=50.0, save_steps=2
    )
    whole = train.train_lora(tiny_model, rows, None, cfg, tmp_path / "whole")

    class Killed(RuntimeError):
        pass

    class KillAfter5(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 5:  # past the step-4 checkpoint, before the end
                raise Killed("the machine went down")

    build = train.build_trainer

    def build_with_kill(*a, **kw):
        trainer, state = build(*a, **kw)
        trainer.add_callback(KillAfter5())
        return trainer, state

    ckpt = tmp_path / "ckpt"
    monkeypatch.setattr(train, "build_trainer", build_with_kill)
    with pytest.raises(Killed):
        train.train_lora(tiny_model, rows, None, cfg, tmp_path / "first", checkpoint_dir=ckpt)
    assert train.latest_checkpoint(ckpt).name == "checkpoint-4"
    monkeypatch.setattr(train, "build_trainer", build)
    logs = []
    resumed = train.train_lora(
        tiny_model, rows, None, cfg, tmp_path / "second", log=logs.append, checkpoint_dir=ckpt
    )
    assert resumed.resumed_from_step == 4 and resumed.steps == 6 and resumed.stopped_by == "steps"
    assert any("resuming the LoRA training from checkpoint-4" in m for m in logs)
    assert not ckpt.exists()  # removed once the adapter is saved
    wa = load_file(str(train.adapter_weights_file(whole.adapter_dir)))
    wb = load_file(str(train.adapter_weights_file(resumed.adapter_dir)))
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5


def test_checkpoint_key_changes_with_what_shapes_the_training():
    cfg = settings(max_steps=6)
    key = train.checkpoint_key("m", "run1", cfg)
    assert key == train.checkpoint_key("m", "run1", dataclasses.replace(cfg, max_minutes=99, save_steps=7))
    assert key != train.checkpoint_key("m", "run2", cfg)
    assert key != train.checkpoint_key("m", "run1", dataclasses.replace(cfg, learning_rate=1e-3))
    assert key != train.checkpoint_key("m", "run1", cfg, {"forms": ["listwise"]})


def test_the_epochs_end_a_budget_longer_than_the_data(tiny_model, tmp_path):
    rows = toy_rows(1)  # 16 rows: 2 steps of 8 an epoch
    result = train.train_lora(tiny_model, rows, None, settings(max_steps=50, epochs=2.0), tmp_path / "a")
    assert result.steps == 4 and result.stopped_by == "epoch"


def test_time_cap_stops_training_and_says_so(tiny_model, tmp_path):
    """A step budget the 2-second cap cuts short: the run stops, warns, and reports stopped_by="time_cap"."""
    rows = toy_rows(2)
    # a budget no machine ends in 2 s (50 epochs did: CI's quick tiny model ran all 100 steps before the cap)
    cfg = settings(max_minutes=2.0 / 60, max_steps=100_000, epochs=5_000.0)
    warnings, infos = [], []
    result = train.train_lora(
        tiny_model, rows, None, cfg, tmp_path / "a", log=infos.append, warn=warnings.append
    )
    planned = 5_000 * math.ceil(rows.height / 8)
    assert result.stopped_by == "time_cap" and result.metrics()["stopped_by_time_cap"] == 1.0
    assert len(warnings) == 1 and "time cap of 0.0333333 min reached" in warnings[0]
    assert 1 <= result.steps < planned
    assert result.seconds < 2.0 + 10.0  # stops at the first step end past 2 s
    assert math.isnan(result.eval_loss)
    assert (tmp_path / "a" / "adapter_config.json").is_file()


def test_no_training_rows_is_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="no training rows"):
        train.train_lora(
            tiny_model,
            pl.DataFrame({"prompt": [], "completion": []}, schema={"prompt": pl.Utf8, "completion": pl.Utf8}),
            None,
            settings(),
            tmp_path / "a",
        )


def test_loss_curve_png(trained, tmp_path):
    path = train.loss_curve_png(trained, tmp_path / "c.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert registry.png_markdown(path).startswith("![loss curve](data:image/png;base64,")


# ----------------------------------------------------------------------------- the asset


def write_prompt_dataset(conn, root, run_id="prompts-run-1"):
    """The parquet files and the sft_prompt_files index the prompts stage would write."""
    root.mkdir(parents=True, exist_ok=True)
    train_rows = toy_rows(2).with_columns(period=pl.lit("train"))
    val = toy_rows(1).with_columns(period=pl.lit("val"))
    lw = pl.DataFrame(
        {
            "period": ["train"] * 2,
            "episode_id": ["x1", "x2"],
            "form": ["listwise", "quantity"],
            "product_id": [None, "p"],
            "prompt": [prompt("list", 1), prompt("qty", 2)],
            "completion": ["A", "1"],
        }
    )
    paths = {}
    for name, df in {"train_utility": train_rows, "train_listwise": lw, "val": val}.items():
        paths[name] = str(root / f"{name}.parquet")
        df.write_parquet(paths[name])
    index = pl.DataFrame(
        {
            "run_id": [run_id] * 3,
            "file": list(paths),
            "form": ["utility", "listwise", "utility"],
            "n_rows": [train_rows.height, 1, val.height],
            "path": list(paths.values()),
            "created_at": [datetime(2026, 11, 1)] * 3,
        }
    )
    old = index.with_columns(
        run_id=pl.lit("old-run"),
        created_at=pl.lit(datetime(2026, 10, 1)),
        path=pl.lit("/nonexistent.parquet"),
    )
    index_rows = pl.concat([old, index])  # noqa: F841 - read by the SQL below (replacement scan)
    conn.execute("create or replace table sft_prompt_files as select * from index_rows")
    return paths


def test_latest_prompt_files_and_missing_table(tmp_path):
    import duckdb

    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    with pytest.raises(ValueError, match="materialize sft_prompt_dataset"):
        registry.latest_prompt_files(conn)
    paths = write_prompt_dataset(conn, tmp_path / "prompts")
    files = registry.latest_prompt_files(conn)
    assert files["run_id"] == "prompts-run-1"
    assert files["train_utility"] == paths["train_utility"] and files["val"] == paths["val"]


def test_lora_adapter_asset(tiny_model, data_dir, duckdb_resource, mlflow_resource):
    from mlflow.tracking import MlflowClient

    from assets.alignment import LoraAdapterConfig, lora_adapter

    with duckdb_resource.get_connection() as conn:
        write_prompt_dataset(conn, data_dir / "prompts" / "prompts-run-1")
    config = LoraAdapterConfig(
        base_model=str(tiny_model),
        top_layers=1,
        batch_size=8,
        max_steps=3,
        learning_rate=5e-3,
        eval_examples=8,
        registered_model="test-adapter",
    )
    result = dg.materialize(
        [lora_adapter],
        resources={"duckdb": duckdb_resource, "mlflow": mlflow_resource},
        run_config=dg.RunConfig({"lora_adapter": config}),
    )
    assert result.success
    meta = result.asset_materializations_for_node("lora_adapter")[0].metadata
    for key in (
        "mlflow_run_id",
        "mlflow_run_url",
        "base_model",
        "train_loss",
        "eval_loss",
        "trainable_params",
        "examples_per_sec",
        "seconds",
        "adapter_path",
        "adapter_sha256",
        "loss_curve",
    ):
        assert key in meta, key
    assert meta["steps"].value == 3 and meta["examples_seen"].value == 24
    assert meta["stopped_by"].value == "steps" and meta["max_steps"].value == 3
    assert meta["time_cap_minutes"].value == LoraAdapterConfig().max_minutes
    assert meta["dataset_run_id"].value == "prompts-run-1"
    assert meta["loss_curve"].value.startswith("![loss curve](data:image/png;base64,")
    adapter_dir = data_dir / "adapters" / result.run_id
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    with duckdb_resource.get_connection() as conn:
        rows = conn.sql("select * from lora_adapters").pl()
    assert rows.height == 1
    row = rows.row(0, named=True)
    assert row["dagster_run_id"] == result.run_id and row["registered_version"] == "1"
    assert row["adapter_path"] == str(adapter_dir) and row["dataset_run_id"] == "prompts-run-1"
    assert row["mlflow_run_id"] == meta["mlflow_run_id"].value
    client = MlflowClient(tracking_uri=mlflow_resource.resolved_tracking_uri())
    versions = client.search_model_versions("name='test-adapter'")
    assert [str(v.version) for v in versions] == ["1"]
    assert versions[0].tags["dataset_run_id"] == "prompts-run-1"
    assert versions[0].tags["base_model"] == str(tiny_model)
    run = client.get_run(row["mlflow_run_id"])
    assert run.data.tags["dataset_run_id"] == "prompts-run-1"
    assert run.data.tags["dagster_run_id"] == result.run_id
    assert run.data.tags["base_model"] == str(tiny_model)
    assert "train_loss_curve" in run.data.metrics
    # the registered model carries the adapter folder
    import mlflow

    local = mlflow.artifacts.download_artifacts("models:/test-adapter/1", dst_path=str(data_dir / "dl"))
    assert any(p.name == "adapter_model.safetensors" for p in __import__("pathlib").Path(local).rglob("*"))


# ----------------------------------------------------------------------------- the real default model


@pytest.mark.slow
def test_default_model_learns_yes_no(tmp_path):
    from resources.models import resolve_model

    rows = toy_rows(4)  # 64 synthetic yes/no rows
    from assets.alignment import LoraAdapterConfig

    config = LoraAdapterConfig(
        batch_size=8, max_steps=20, epochs=10.0, logging_steps=4, loss="pointwise", pack_prefix=False
    )
    cfg = train.settings_of(config)  # the asset's defaults: top 8 layers, r 16
    result = train.train_lora(resolve_model("default"), rows, rows.sample(32, seed=0), cfg, tmp_path / "a")
    assert result.layers_to_transform == list(range(22, 30))
    assert result.eval_loss < result.eval_loss_before - 0.1
    curve = [p["loss"] for p in result.loss_history]
    assert min(curve[-2:]) < curve[0]


def test_bf16_autocast_only_where_the_cpu_multiplies_bf16():
    """An AVX2-only CPU emulates bf16 (about 50x slower than fp32 here): the training stays in fp32 there."""
    from assets.alignment.train import cpu_has_bf16

    assert not cpu_has_bf16("processor: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert cpu_has_bf16("flags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_has_bf16("flags\t\t: fpu avx2 amx_bf16 amx_tile\n")
    assert not cpu_has_bf16("")
