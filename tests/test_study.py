"""Cost–accuracy curves, matched-budget interpolation, areas and the study's aggregation, on hand-made inputs."""

import numpy as np
import pytest

from quicknets_jax.core import costs as cost_model
from quicknets_jax.core import curves
from quicknets_jax.core.costs import BlockCost
from quicknets_jax.reporting import tables
from quicknets_jax.workflows import study
from quicknets_jax.workflows.experiment_config import StudyConfig


def test_accuracy_at_budget_interpolates_between_neighbours():
  costs, acc = [3.0, 1.0, 2.0], [0.9, 0.5, 0.8]  # unsorted on purpose
  assert curves.accuracy_at_budget(costs, acc, 1.5) == pytest.approx(0.65)
  assert curves.accuracy_at_budget(costs, acc, 2.5) == pytest.approx(0.85)
  assert curves.accuracy_at_budget(costs, acc, 1.0) == pytest.approx(0.5)
  assert curves.accuracy_at_budget(costs, acc, 3.0) == pytest.approx(0.9)


def test_accuracy_at_budget_outside_the_curve_is_none():
  assert curves.accuracy_at_budget([1.0, 2.0], [0.5, 0.6], 0.5) is None
  assert curves.accuracy_at_budget([1.0, 2.0], [0.5, 0.6], 2.5) is None


def test_points_at_the_same_cost_are_averaged():
  assert curves.accuracy_at_budget([1.0, 1.0, 3.0], [0.4, 0.6, 0.9], 2.0) == pytest.approx(0.7)


def test_area_under_curve_by_hand():
  # trapezoids: (1→2) (0.5+0.7)/2 = 0.6, (2→4) 2·(0.7+0.9)/2 = 1.6
  costs, acc = [1.0, 2.0, 4.0], [0.5, 0.7, 0.9]
  assert curves.area_under_curve(costs, acc) == pytest.approx(2.2)
  # clipped to [1.5, 3]: (1.5→2) 0.5·(0.6+0.7)/2 + (2→3) (0.7+0.8)/2
  assert curves.area_under_curve(costs, acc, 1.5, 3.0) == pytest.approx(0.325 + 0.75)
  assert curves.area_under_curve([2.0], [0.7]) == 0.0
  with pytest.raises(ValueError, match="curve"):
    curves.area_under_curve([], [])


def test_compare_curves_budgets_and_shared_range():
  two = {"a": ([20.0, 100.0], [0.5, 0.9]), "b": ([40.0, 80.0], [0.6, 0.8])}
  out = curves.compare_curves(two, full_cost=100.0, budgets=(0.25, 0.5, 0.75))
  assert out["matched_budget_accuracy"]["a"] == pytest.approx([0.525, 0.65, 0.775])
  assert out["matched_budget_accuracy"]["b"][0] is None
  assert out["matched_budget_accuracy"]["b"][1:] == pytest.approx([0.65, 0.775])
  assert out["shared_range"] == pytest.approx([0.4, 0.8])
  assert out["shared_range_budgets"] == pytest.approx([0.5, 0.6, 0.7])
  assert out["auc"]["a"] == pytest.approx(0.8 * 0.7)
  assert out["mean_accuracy_shared_range"]["a"] == pytest.approx(0.7)  # linear: mean = midpoint value
  assert out["mean_accuracy_shared_range"]["b"] == pytest.approx(0.7)
  with pytest.raises(ValueError, match="full_cost"):
    curves.compare_curves(two, full_cost=0.0)


def test_cascade_costs_leave_commitment_heads_out_of_confidence_only_rules():
  costs = [BlockCost(10.0, 1.0, 2.0), BlockCost(20.0, 1.0, 2.0)]
  assert cost_model.cascade_costs(costs, False).tolist() == [11.0, 32.0]
  assert cost_model.cascade_costs(costs, True).tolist() == [13.0, 36.0]


def _hand_made():
  # exit 0: sure and right on samples 0, 1; sure and WRONG on sample 2 (its commitment says no);
  # exit 1 is right everywhere but less sure.
  probs = np.array(
    [[[0.99, 0.01], [0.01, 0.99], [0.99, 0.01], [0.5, 0.5]], [[0.8, 0.2], [0.2, 0.8], [0.2, 0.8], [0.3, 0.7]]],
    np.float32,
  )
  commit = np.array([[1.0, 1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
  labels = np.array([0, 1, 1, 1])
  costs = [BlockCost(10.0, 0.0, 1.0), BlockCost(10.0, 0.0, 1.0)]
  return probs, commit, labels, costs


def test_analyse_hand_made_network():
  probs, commit, labels, costs = _hand_made()
  out = study.analyse(probs, commit, labels, costs, full_cost=20.0, thresholds=[0.5, 1.0], budgets=(0.5, 1.0))
  conf, comm, last = (out["curves"][k] for k in ("confidence", "commitment", "sdn_last"))
  # t = 0.5: confidence only sends samples 0-2 out at exit 0 (one wrong); sample 3 falls back to the
  # more confident exit 1 (right) and pays the whole cascade: cost (10·3 + 20)/4
  assert conf[0]["accuracy"] == pytest.approx(0.75) and conf[0]["inference_flops"] == pytest.approx(12.5)
  # with commitment, sample 2 is held back and exit 1 (confidence of 0.8 ≈ 0.28 < 0.5) doesn't
  # qualify, so it falls back to the most confident exit — exit 0, wrong again — at full cost 22
  assert comm[0]["accuracy"] == pytest.approx(0.75)
  assert comm[0]["inference_flops"] == pytest.approx((11 * 2 + 22 * 2) / 4)
  # t = 1: nobody qualifies; most-confident fallback vs the last exit
  assert conf[1]["accuracy"] == pytest.approx(0.75) and last[1]["accuracy"] == pytest.approx(1.0)
  assert last[1]["cost_fraction"] == pytest.approx(1.0)
  assert out["per_exit_accuracy"] == pytest.approx([0.5, 1.0])
  assert out["matched_budget_accuracy"]["sdn_last"][1] == pytest.approx(1.0)
  assert len(out["calibration"]) == 2


def test_study_thresholds_span_both_ends():
  t = curves.study_thresholds()
  assert t[0] == 0.0 and t[-1] == 1.0 and np.all(np.diff(t) > 0)


def test_aggregate_and_markdown():
  probs, commit, labels, costs = _hand_made()
  runs = [
    study.analyse(probs, commit, labels, costs, 20.0, thresholds=[0.0, 0.5, 1.0]),
    study.analyse(probs[:, ::-1], commit[:, ::-1], labels[::-1], costs, 20.0, thresholds=[0.0, 0.5, 1.0]),
  ]
  agg = study.aggregate_analyses(runs)
  assert agg["auc"]["confidence"]["n"] == 2 and agg["auc"]["confidence"]["std"] == pytest.approx(0.0, abs=1e-9)
  assert len(agg["curves"]["commitment"]) == 3
  diff = agg["differences"]["commitment_minus_confidence"]["auc"]
  assert diff["mean"] == pytest.approx(runs[0]["auc"]["commitment"] - runs[0]["auc"]["confidence"])
  results = dict(dataset="toy", model="toy", seeds=[0, 1], joint=agg)
  text = tables.study_markdown(results)
  assert "commitment_minus_confidence" in text and "| 1 |" in text


def test_study_config_refuses_bad_values():
  with pytest.raises(ValueError, match="methods"):
    StudyConfig(methods=("sdn",))
  with pytest.raises(ValueError, match="budgets"):
    StudyConfig(budgets=(0.0,))


def test_seeds_without_a_shared_cost_range_are_left_out_of_its_mean():
  """One seed's rules share no cost range (None), another's do: the budget accuracies are averaged over
  the seed that has them, and the table prints them."""
  from quicknets_jax.core import stats

  per_seed = [{"acc": {"a": [0.5, 0.7]}}, {"acc": {"a": None}}, {"acc": {"a": [0.7, 0.9]}}]
  aggregated = stats.aggregate_tree(per_seed)["acc"]["a"]
  assert [s["n"] for s in aggregated] == [2, 2]
  np.testing.assert_allclose([s["mean"] for s in aggregated], [0.6, 0.8])
  assert stats.aggregate_tree([{"a": None}, {"a": None}]) == {"a": None}
