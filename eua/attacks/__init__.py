"""Attacks that test whether unlearned knowledge comes back: relearning, quantization, rephrased queries.

``eua attack --config configs/attack.yaml`` runs them on one unlearned checkpoint and writes the
TOFU forget metrics before and after each attack (:mod:`eua.attacks.runner`).
"""
