"""The SymPy proofs: each holds, each rejects wrong statements, and each matches ``hsa_ref``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sympy as sp
import torch

import hsa_fast
import proofs
from hsa_ref import (
    Hierarchy,
    family_shares,
    hsa_attention_matrix,
    hsa_reference,
    kl_to_softmax,
    log_partition,
    score_matrix,
    softmax_kl_lower_bound,
)
from proofs import Recursion, Tree, TreeModel
from proofs.__main__ import main
from proofs.bilinear import BlockSummary, canonical_sums
from proofs.cost import balanced_nested, count_energies
from proofs.programme import down_pass, up_pass
from proofs.result import Derivation, counterexample, render_report

# --------------------------------------------------------------------------- the proofs hold


@pytest.fixture(scope="module")
def results() -> dict[str, proofs.ProofResult]:
    return {r.name: r for r in proofs.run_all()}


def test_run_all_covers_every_proof(results):
    assert list(results) == [
        "softmax",
        "family",
        "decomposition",
        "bilinear",
        "special_cases",
        "programme",
        "cost",
    ]


@pytest.mark.parametrize(
    "name",
    ["softmax", "family", "decomposition", "bilinear", "special_cases", "programme", "cost"],
)
def test_proof_holds(results, name):
    result = results[name]
    assert result.checks, f"{name} checks nothing"
    assert result.failures == (), [s.text for s in result.failures]
    assert result.verdict


def test_report_and_cli(results, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("proofs.__main__.run_all", lambda: list(results.values()))
    out = tmp_path / "sub" / "report.md"
    assert main(["--output", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    for r in results.values():
        assert f"## {r.title} (proved)" in text
    assert "$$" in text
    assert "NOT PROVED" not in text


def test_cli_fails_when_a_proof_fails(results, tmp_path, monkeypatch):
    broken = dataclasses.replace(results["cost"], verdict=False)
    monkeypatch.setattr("proofs.__main__.run_all", lambda: [results["softmax"], broken])
    assert main(["--output", str(tmp_path / "r.md")]) == 1
    assert "NOT PROVED" in (tmp_path / "r.md").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the machinery


def test_derivation_needs_a_check_and_reports_witnesses():
    d = Derivation("x", "x", "nothing checked")
    d.say("a derivation step only")
    assert not d.result().verdict
    a, b = sp.symbols("a b", real=True)
    d.zero("a true identity", (a + b) ** 2 - a**2 - 2 * a * b - b**2)
    assert d.result().verdict
    assert not d.zero("a false identity", (a + b) ** 2 - a**2 - b**2)
    assert "not zero" in d.steps[-1].text
    assert not d.result().verdict
    assert counterexample(sp.Integer(0)) is None


def test_canonical_sums_only_proves_true_identities():
    n, d = sp.symbols("n d", positive=True, integer=True)
    i, j, t = sp.symbols("i j t", positive=True, integer=True)
    q = sp.IndexedBase("q", real=True)
    fubini = sp.Sum(sp.Sum(q[i, t], (i, 1, n)), (t, 1, d)) - sp.Sum(q[i, t], (t, 1, d), (i, 1, n))
    assert canonical_sums(fubini) == 0
    square = sp.Sum(sp.Sum(q[i, t], (i, 1, n)) ** 2, (t, 1, d))
    assert canonical_sums(square - sp.Sum(q[i, t] ** 2, (i, 1, n), (t, 1, d))) != 0
    constant = sp.Sum(q[i, t], (i, 1, n), (j, 1, n)) - n * sp.Sum(q[i, t], (i, 1, n))
    assert canonical_sums(constant) == 0


# --------------------------------------------------------------------------- wrong statements

UNIFORM_WEIGHTS = Recursion(weight=lambda size_b, size_a, b: sp.Integer(1) / b)
LOG_SIZE_DROPPED = Recursion(sibling_logit=lambda size, energy: energy)
LOG_MEAN_EXP = Recursion(block_energy=lambda sum_of, count: sp.log(sum_of(sp.exp) / count))


def _failed(result: proofs.ProofResult, *fragments: str) -> None:
    assert not result.verdict
    texts = " | ".join(s.text for s in result.failures)
    for fragment in fragments:
        assert fragment in texts, texts


def test_softmax_rejects_other_generators():
    _failed(proofs.prove_softmax(g=lambda s: sp.exp(-s), sizes=(2,)), "claimed minimiser (n = 2)")
    _failed(proofs.prove_softmax(g=lambda s: s**2, sizes=()), "claimed minimiser (general n)")


def test_family_rejects_dropping_log_size():
    _failed(proofs.prove_family(LOG_SIZE_DROPPED, siblings=(2,)), "claimed share table")


def test_family_rejects_a_tempered_logit():
    hot = Recursion(sibling_logit=lambda size, energy: sp.log(size) + 2 * energy)
    _failed(proofs.prove_family(hot, siblings=(1,)), "optimal value is -L(B)")


@pytest.mark.parametrize(
    ("recursion", "induction_step", "concrete_step"),
    [
        (UNIFORM_WEIGHTS, "A3. Induction step, 2 children", "The split"),
        (LOG_SIZE_DROPPED, "A4. The brackets", "Each bracket"),
        (LOG_MEAN_EXP, "claimed block energy", "Each bracket"),
    ],
    ids=["weights 1/b", "log|C| dropped", "log-mean-exp energy"],
)
def test_decomposition_rejects_wrong_recursions(recursion, induction_step, concrete_step):
    _failed(proofs.prove_decomposition(recursion, trees=(), branchings=(2,)), induction_step)
    tree_only = proofs.prove_decomposition(recursion, trees=([[0, [1, 2]], 3],), induction=False)
    _failed(tree_only, concrete_step, "Numerical confirmation")


def test_decomposition_with_equal_sizes_cannot_tell_weights_apart():
    # |B|/|A| = 1/b when siblings have equal sizes: the concrete check must then pass.
    equal = ([[0, 1], [2, 3]],)
    assert proofs.prove_decomposition(UNIFORM_WEIGHTS, trees=equal, induction=False).verdict


def test_bilinearity_rejects_norm_of_the_mean():
    def norm_of_mean(x: BlockSummary) -> sp.Expr:
        sq = x.inner(x.mean_q, x.mean_q) + x.inner(x.mean_k, x.mean_k)
        return x.scale * (x.inner(x.mean_q, x.mean_k) - sq / 2)

    result = proofs.prove_bilinearity(distance=norm_of_mean, shapes=((2, 2, 2),))
    _failed(result, "Distance energy, |B| = 2", "Distance energy, general")
    assert len(result.failures) == 2


def test_bilinearity_rejects_a_missing_mean():
    def summed(x: BlockSummary) -> sp.Expr:
        return x.scale * x.inner(x.mean_q, x.mean_k) * 2

    _failed(proofs.prove_bilinearity(dot=summed, shapes=((1, 2, 2),)), "Dot energy, general")


def test_special_cases_reject_a_tempered_logit():
    hot = Recursion(sibling_logit=lambda size, energy: sp.log(size) + 2 * energy)
    _failed(proofs.prove_special_cases(hot, family_sizes=(2,), wrapped=()), "One family over 2")


@pytest.mark.parametrize("fault", ["sum instead of mean", "W(A) dropped"])
def test_programme_rejects_wrong_down_passes(fault):
    def u_step(u_a, w_a, sent):
        if fault == "W(A) dropped":
            return u_a + sp.Add(*(dl * sp.Add(*vals) / len(vals) for dl, vals in sent))
        return u_a + w_a * sp.Add(*(dl * sp.Add(*vals) for dl, vals in sent))

    _failed(proofs.prove_programme(u_step, trees=([[0, [1, 2]], 3],)), "down pass gives")


def test_cost_rejects_wrong_counts():
    _failed(
        proofs.prove_cost(energy_count=lambda n, bs: n + sum(b * b for b in bs)),
        "matches the claimed count",
    )
    _failed(
        proofs.prove_cost(balanced_count=lambda b, depth: b ** (depth + 1)),
        "claimed closed form",
        "closed form matches the count",
    )


# --------------------------------------------------------------------------- proofs vs hsa_ref

TREES = [
    [0, 1, 2, 3],
    [[0, 1], 2],
    [[0, [1, 2]], 3],
    [[[0, 1]], 2],
    [[0, 1, 2], [3, [4, 5]], 6],
]


def _scores(tree: Tree, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    n = tree.num_leaves
    q, k = (torch.randn(n, 3, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, 0.7


def _evaluate(model: TreeModel, s: np.ndarray, exprs: list[sp.Expr]) -> np.ndarray:
    """The derived expressions at the scores ``s``, compiled once."""
    return np.array(sp.lambdify(list(model.scores), exprs, "math")(*s.ravel()), dtype=float)


@pytest.mark.parametrize("nested", TREES, ids=str)
@pytest.mark.parametrize("energy", ["dot", "distance"])
def test_derived_recursion_is_the_reference(nested, energy):
    tree = Tree.from_nested(nested)
    h = Hierarchy.from_nested(nested)
    assert list(tree.parent) == h.parent
    q, k, scale = _scores(tree, len(str(nested)))
    s = score_matrix(q, k, scale=scale, energy=energy).numpy()
    model = TreeModel(tree)
    n, nodes = tree.num_leaves, tree.num_nodes
    share_exprs = [
        model.mu[b] if b == c else model.delta[(b, c)]
        for a in tree.families
        for b in tree.children(a)
        for c in tree.children(a)
    ]
    exprs = [*(model.F[x] for x in range(nodes)), *model.theta, *share_exprs]
    values = _evaluate(model, s, exprs)

    f_ref = log_partition(q, k, h, scale=scale, energy=energy).numpy()
    np.testing.assert_allclose(values[:nodes], f_ref, rtol=0, atol=1e-12)

    theta = hsa_attention_matrix(q, k, h, scale=scale, energy=energy).numpy()
    np.testing.assert_allclose(values[nodes : nodes + n * n].reshape(n, n), theta, atol=1e-12)

    shares = family_shares(q, k, h, scale=scale, energy=energy)
    start = nodes + n * n
    for a in tree.families:
        kids = tree.children(a)
        assert kids == h.children(a)
        b = len(kids)
        derived = values[start : start + b * b].reshape(b, b)
        np.testing.assert_allclose(derived, shares[a].numpy(), rtol=0, atol=1e-12)
        start += b * b


@pytest.mark.parametrize("nested", TREES, ids=str)
def test_derived_optimum_is_the_reference_objective(nested):
    tree = Tree.from_nested(nested)
    h = Hierarchy.from_nested(nested)
    q, k, scale = _scores(tree, 7)
    s = score_matrix(q, k, scale=scale, energy="dot").numpy()
    model = TreeModel(tree)
    n = tree.num_leaves
    optimum = (
        sp.Add(*(sp.log(sp.Add(*(sp.exp(model.scores[i, j]) for j in range(n)))) for i in range(n)))
        - n * model.F[tree.root]
    )
    derived = float(_evaluate(model, s, [optimum])[0])
    bound = float(softmax_kl_lower_bound(q, k, h, scale=scale))
    theta = hsa_attention_matrix(q, k, h, scale=scale)
    attained = float(kl_to_softmax(theta, q, k, h, scale=scale))
    assert derived == pytest.approx(bound, abs=1e-12)
    assert derived == pytest.approx(attained, abs=1e-12)


@pytest.mark.parametrize("nested", TREES, ids=str)
def test_derived_programme_is_the_reference_and_fast_output(nested):
    tree = Tree.from_nested(nested)
    h = Hierarchy.from_nested(nested)
    q, k, scale = _scores(tree, 11)
    v = torch.randn(tree.num_leaves, 1, generator=torch.Generator().manual_seed(3))
    v = v.to(torch.float64)
    s = score_matrix(q, k, scale=scale, energy="dot").numpy()
    model = TreeModel(tree)
    f, log_z, delta = up_pass(
        tree, lambda i: model.scores[i, i], model.block_energy, proofs.HSA_RECURSION
    )
    v_symbols = sp.symbols(f"v_0:{tree.num_leaves}", real=True)
    y = down_pass(tree, f, log_z, delta, v_symbols)
    args = [*model.scores, *v_symbols]
    values = [*s.ravel(), *v[:, 0].tolist()]
    derived = sp.lambdify(args, y, "math")(*values)
    expected = hsa_reference(q, k, v, h, scale=scale)[:, 0].numpy()
    np.testing.assert_allclose(derived, expected, rtol=0, atol=1e-12)
    fast = hsa_fast.hsa(q, k, v, h, scale=scale)[:, 0].numpy()
    np.testing.assert_allclose(derived, fast, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "nested", [*TREES, 0, balanced_nested(2, 3), balanced_nested(3, 2)], ids=str
)
def test_counted_energies_follow_the_hierarchy(nested):
    tree = Tree.from_nested(nested)
    h = Hierarchy.from_nested(nested)
    branching = h.branching[h.num_leaves :]
    assert count_energies(tree) == h.num_leaves + int((branching * (branching - 1)).sum())


def test_report_renders_every_result(results):
    text = render_report(list(results.values()), header="head")
    assert text.startswith("# ")
    assert "head" in text
    assert text.count("| proved |") == len(results)
