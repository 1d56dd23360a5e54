"""Evaluation: held-out loss, generation-based exact-match accuracy, before/after reports."""

from vregion.eval.answers import normalize_answer
from vregion.eval.generation import answer_accuracy, split_prompts
from vregion.eval.loss import mean_loss
from vregion.eval.report import evaluate_model, format_report

__all__ = ["answer_accuracy", "evaluate_model", "format_report", "mean_loss", "normalize_answer", "split_prompts"]
