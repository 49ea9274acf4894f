"""Drafts agree with their findings by construction: beam choice, repair, overrides, thresholds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_fixtures import tiny_model
from transformers import DynamicCache, EncoderDecoderCache

from rrg_core.decisions import DecisionRule, apply_overrides, coherent, fit_thresholds, micro_f1, parse_overrides
from rrg_core.decoder import PREFIX_LENGTH
from rrg_core.faithful import NORMAL_SENTENCE, make_consistent, named_sides, side_of
from rrg_core.labeler import label_report
from rrg_core.observations import OBSERVATIONS, State
from rrg_core.pipeline import ReportPipeline
from rrg_core.report_text import split_sentences, to_prose
from rrg_core.sentence_bank import _BANK, SIDED, sentences_for

NEG = int(State.NEGATIVE)


def states(**named: int) -> np.ndarray:
    out = np.full(len(OBSERVATIONS), NEG)
    for name, state in named.items():
        out[OBSERVATIONS.index(name.replace("_", " "))] = state
    return coherent(out)


def positives(text: str) -> set[str]:
    return {o for o, v in label_report(text).items() if v == 1}


# ---------------------------------------------------------------- the sentence bank


@pytest.mark.parametrize("observation, state", sorted(_BANK, key=str))
def test_every_bank_sentence_states_exactly_its_finding(observation, state):
    value = 1 if state == State.POSITIVE else -1
    for side in (None, "right", "left"):
        for sentence in sentences_for(observation, state, side):
            labels = {o: v for o, v in label_report(sentence).items() if v is not None and o != "No Finding"}
            assert labels == {observation: value}, sentence
            if side and observation in SIDED:
                assert named_sides(sentence) == {side}


def test_the_bank_refuses_what_it_cannot_state():
    with pytest.raises(ValueError, match="only positive or uncertain"):
        sentences_for("Cardiomegaly", State.NEGATIVE)


# ---------------------------------------------------------------- choosing and repairing


def test_a_contradicting_sentence_is_replaced_in_place_and_the_rest_kept():
    draft = "the heart is normal in size . there is no pleural effusion . the lungs are clear ."
    result = make_consistent([draft], states(Cardiomegaly=1), {})
    sentences = split_sentences(result.text)
    assert sentences[0] in (s for s in sentences_for("Cardiomegaly", State.POSITIVE))
    assert sentences[1:] == ["there is no pleural effusion", "the lungs are clear"]
    assert positives(result.text) == {"Cardiomegaly"}
    assert result.mismatches_before > 0 and result.edits


def test_the_beam_that_agrees_is_chosen_before_any_repair():
    beams = ["the heart is normal in size .", "there is cardiomegaly . no pneumothorax ."]
    result = make_consistent(beams, states(Cardiomegaly=1), {})
    assert (result.beam, result.text) == (1, beams[1])
    assert result.decoder_text == beams[0] and result.mismatches_chosen == 0


def test_the_side_follows_the_findings_map():
    result = make_consistent(["right basilar atelectasis . no pneumothorax ."], states(Atelectasis=1),
                             {"Atelectasis": 0.45})
    assert result.text == "left basilar atelectasis . no pneumothorax ."  # the map's majority
    # A map split evenly leaves the text's side alone.
    unchanged = make_consistent(["right basilar atelectasis ."], states(Atelectasis=1), {"Atelectasis": 0.5})
    assert unchanged.text == "right basilar atelectasis ."


def test_an_added_finding_takes_its_maps_side_and_the_choosers_phrasing():
    options = sentences_for("Pleural Effusion", State.POSITIVE, "right")
    result = make_consistent(["the lungs are clear ."], states(Pleural_Effusion=1), {"Pleural Effusion": 0.7},
                             choose=lambda sentences: len(sentences) - 1)
    assert result.text == f"the lungs are clear . {options[-1]} ."
    # A side is only added where the map clearly shows one.
    weak = make_consistent(["the lungs are clear ."], states(Pleural_Effusion=1), {"Pleural Effusion": 0.55})
    assert named_sides(weak.text) == set()


def test_uncertain_findings_are_hedged_and_unmentioned_abnormalities_removed():
    result = make_consistent(["there is a small left pleural effusion . moderate cardiomegaly ."],
                             states(Pleural_Effusion=int(State.UNCERTAIN)), {})
    labels = label_report(result.text)
    assert labels["Pleural Effusion"] == -1 and labels["Cardiomegaly"] is None


def test_a_draft_with_nothing_left_says_the_study_is_normal():
    result = make_consistent(["right basilar atelectasis ."], states(), {})
    assert result.text == f"{NORMAL_SENTENCE} ."
    assert label_report(result.text)["No Finding"] == 1


def test_side_of_a_map():
    assert (side_of(0.8), side_of(0.2), side_of(0.5), side_of(None)) == ("right", "left", None, None)
    assert (side_of(0.55, 0.6), side_of(0.35, 0.6)) == (None, "left")


# ---------------------------------------------------------------- the model: consistent for any weights


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_weights_still_write_drafts_that_agree_with_their_findings(seed):
    model, batch = tiny_model(seed=seed)
    rng = np.random.default_rng(seed)
    overrides = [
        {OBSERVATIONS[j]: ["positive", "negative", "uncertain", "blank"][rng.integers(4)]
         for j in rng.choice(13, size=3, replace=False)}
        for _ in range(len(batch["images"]))
    ]
    reporter = ReportPipeline(model)
    for reports in (reporter.generate(batch["images"]), reporter.generate(batch["images"], states=overrides)):
        for report in reports:
            labels = label_report(report.text)
            for name, state in zip(OBSERVATIONS, report.states):
                assert (labels[name] == 1) == (state == State.POSITIVE), (name, report.text)
                if state == State.UNCERTAIN:
                    assert labels[name] == -1, (name, report.text)
            sides = {name: side_of(share) for name, share in report.map_right_shares.items()}
            for sentence in split_sentences(report.text):
                for name in SIDED & positives(sentence):
                    if sides.get(name) and len(named_sides(sentence)) == 1:
                        assert named_sides(sentence) == {sides[name]}, sentence


def test_an_override_reaches_the_text_and_the_export():
    model, batch = tiny_model()
    images = batch["images"][:1]
    report = ReportPipeline(model).generate(images, states=[{"Pneumothorax": "positive", "no finding": "blank"}])[0]
    assert label_report(report.text)["Pneumothorax"] == 1
    assert report.states[OBSERVATIONS.index("Pneumothorax")] == State.POSITIVE
    exported = report.to_dict()
    assert exported["overrides"] == {"Pneumothorax": "positive", "No Finding": "not mentioned"}
    rows = {f["observation"]: f for f in exported["findings"]}
    assert rows["Pneumothorax"]["set_by"] == "reader" and rows["Pneumothorax"]["decision_rule"] == "set by the reader"
    json.dumps(exported)  # JSON-ready
    with pytest.raises(ValueError, match="unknown observation 'Heart'"):
        ReportPipeline(model).generate(images, states=[{"Heart": "positive"}])


def test_the_decoders_best_candidate_is_plain_beam_search():
    model = tiny_model()[0].eval()
    memory = torch.randn(2, 10, model.config.d_model)
    state = torch.as_tensor(coherent(np.stack([states(Cardiomegaly=1), states()])))
    candidates = model.decoder.generate(memory, state, num_beams=3, max_new_tokens=8, min_new_tokens=2)
    assert [len(c) for c in candidates] == [3, 3]
    cfg = model.decoder.bert.config
    single = model.decoder.bert.generate(
        cache=EncoderDecoderCache(DynamicCache(config=cfg), DynamicCache(config=cfg)),
        input_ids=model.decoder.prefix(state), attention_mask=torch.ones_like(model.decoder.prefix(state)),
        encoder_hidden_states=model.decoder.memory_projection(memory), num_beams=3, do_sample=False,
        max_new_tokens=8, min_new_tokens=2, eos_token_id=model.decoder.eos_id, pad_token_id=model.decoder.pad_id,
    )
    texts = model.tokenizer.batch_decode(single[:, PREFIX_LENGTH:], skip_special_tokens=True)
    assert [c[0] for c in candidates] == texts


def test_sentence_scores_do_not_depend_on_the_padding_of_a_batch():
    model = tiny_model()[0].eval()
    memory, state = torch.randn(1, 10, model.config.d_model), torch.as_tensor(states()[None])
    short = "mild cardiomegaly ."
    alone = model.decoder.sentence_scores(memory, state, [short])
    padded = model.decoder.sentence_scores(memory, state, [short, "the heart is normal in size . the lungs are clear ."])
    assert torch.allclose(alone, padded[:1], atol=1e-5)


# ---------------------------------------------------------------- decisions


def test_thresholds_decide_positive_and_otherwise_the_likeliest_other_state():
    rule = DecisionRule({"Cardiomegaly": 0.3})
    p = np.full((1, 14, 4), 0.0)
    p[..., State.NEGATIVE] = 1.0
    p[0, 1] = [0.1, 0.31, 0.5, 0.09]  # Cardiomegaly above its threshold, though NEGATIVE is likelier
    p[0, 2] = [0.1, 0.45, 0.05, 0.4]  # Lung Opacity below the default 0.5: uncertain beats blank and negative
    decided = rule.decide(p)[0]
    assert decided[1] == State.POSITIVE and decided[2] == State.UNCERTAIN and decided[3] == State.NEGATIVE


def test_no_finding_follows_the_pathologies_and_a_normal_override_clears_them():
    s = states(Pleural_Effusion=1, Support_Devices=1)
    assert s[OBSERVATIONS.index("No Finding")] == State.BLANK
    assert states(Support_Devices=1)[OBSERVATIONS.index("No Finding")] == State.POSITIVE
    normal = apply_overrides(s, parse_overrides({"No Finding": "positive"}))
    assert normal[OBSERVATIONS.index("Pleural Effusion")] == State.NEGATIVE
    assert normal[OBSERVATIONS.index("Support Devices")] == State.POSITIVE
    assert normal[OBSERVATIONS.index("No Finding")] == State.POSITIVE
    with pytest.raises(ValueError, match="No Finding follows the other findings"):
        apply_overrides(states(), parse_overrides({"No Finding": "negative"}))
    abnormal = apply_overrides(states(), parse_overrides({"No Finding": "blank", "Edema": "uncertain"}))
    assert abnormal[OBSERVATIONS.index("No Finding")] == State.BLANK


def test_a_sentence_repeated_word_for_word_is_said_once():
    result = make_consistent(["the lungs are clear . the bones are normal . the bones are normal ."], states(), {})
    assert result.text == "the lungs are clear . the bones are normal ."
    assert result.edits == ["removed 1 repeated sentence(s)"]


def test_fitted_thresholds_are_a_joint_optimum_of_micro_f1():
    rng = np.random.default_rng(0)
    truth = np.where(rng.random((300, 14)) < 0.15, int(State.POSITIVE), NEG)
    truth = coherent(truth)
    p_pos = np.clip((truth == State.POSITIVE) * 0.25 + rng.random((300, 14)) * 0.6, 0, 1)
    probabilities = np.stack([(1 - p_pos) / 3, p_pos, (1 - p_pos) / 3, (1 - p_pos) / 3], axis=-1)
    thresholds, best, counts = fit_thresholds(probabilities, truth)
    assert best == pytest.approx(micro_f1(coherent(DecisionRule(thresholds).decide(probabilities)), truth))
    assert best > micro_f1(coherent(DecisionRule({}).decide(probabilities)), truth)  # better than 0.5 everywhere
    for name in thresholds:  # no single threshold can be moved to a better candidate (quantiles of its P)
        for t in np.quantile(probabilities[:, OBSERVATIONS.index(name), 1], np.linspace(0, 1, 64)):
            trial = coherent(DecisionRule({**thresholds, name: float(t)}).decide(probabilities))
            assert micro_f1(trial, truth) <= best + 1e-9
    rare = fit_thresholds(probabilities, np.full_like(truth, NEG))[0]
    assert set(rare.values()) == {0.5}  # too few positives: the posterior's majority


def test_decision_rule_round_trip_and_bad_files(tmp_path):
    rule = DecisionRule({"Cardiomegaly": 0.25}, fitted_on="a test")
    rule.save(tmp_path)
    assert DecisionRule.load(tmp_path) == rule
    assert DecisionRule.load(tmp_path / "nothing") is None
    (tmp_path / "decision.json").write_text(json.dumps({"thresholds": {"Heart": 0.3}}))
    with pytest.raises(ValueError, match="unknown observation"):
        DecisionRule.load(tmp_path)
    (tmp_path / "decision.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read decision thresholds"):
        DecisionRule.load(tmp_path)


def test_saved_models_keep_their_thresholds(tmp_path):

    model, _ = tiny_model()
    reporter = ReportPipeline(model, decision=DecisionRule({"Cardiomegaly": 0.05}))
    reporter.save_pretrained(tmp_path)
    assert ReportPipeline.from_pretrained(tmp_path).decision == reporter.decision


@pytest.mark.parametrize("raw, prose", [
    ("plate - like atelectasis . no effusion .", "Plate-like atelectasis. No effusion."),
    ("right ij line tip in the svc . xxxx wires .", "Right IJ line tip in the SVC. XXXX wires."),
    ("a 2 . 5 cm nodule ( right upper lobe ) , stable .", "A 2.5 cm nodule (right upper lobe), stable."),
    ("", ""),
])
def test_drafts_read_as_prose(raw, prose):
    assert to_prose(raw) == prose


def test_the_rule_shows_the_threshold_on_the_tables_calibrated_scale():
    from rrg_core.decisions import rule_text

    rule = DecisionRule({"Cardiomegaly": 0.2})
    assert rule_text("Cardiomegaly", rule, 1.0, False) == "positive at P(pos.) ≥ 0.20"
    assert rule_text("Cardiomegaly", rule, 1.0, False, lambda o, t: t * 2) == "positive at P(pos.) ≥ 0.40"
    assert rule_text("Cardiomegaly", rule, 1.0, True) == "set by the reader"
    assert rule_text("Cardiomegaly", None, 0.75, False) == "likeliest state (prior × 0.75)"
