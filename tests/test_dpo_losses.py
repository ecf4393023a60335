"""DPO and sequence scores: plain-Python loops, the docstring's numbers, step 0, beta -> 0, and a real
optimisation on a synthetic preference set."""
import math

import pytest
import torch

from minirlhf.losses import dpo_loss, sequence_scores


def log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def loop_dpo(pc, pr, rc, rr, beta, loss_type, eps=0.0):
    """Per-pair losses and rewards with Python floats, one pair at a time."""
    losses, chosen, rejected = [], [], []
    for a, b, c, d in zip(pc, pr, rc, rr):
        delta = (a - b) - (c - d)
        if loss_type == "sigmoid":
            losses.append(-(1 - eps) * log_sigmoid(beta * delta) - eps * log_sigmoid(-beta * delta))
        elif loss_type == "hinge":
            losses.append(max(0.0, 1 - beta * delta))
        else:
            losses.append((delta - 1 / (2 * beta)) ** 2)
        chosen.append(beta * (a - c))
        rejected.append(beta * (b - d))
    return losses, chosen, rejected


def random_logps(seed, B=9):
    g = torch.Generator().manual_seed(seed)
    return [-torch.rand(B, generator=g, dtype=torch.float64) * 20 for _ in range(4)]


# ---------------------------------------------------------------------------- sequence_scores


def test_sequence_scores_matches_loop_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(3, 4, 6, generator=g, dtype=torch.float64) * 5
    mask = torch.rand(3, 4, 6, generator=g) < 0.6
    mask[..., 0] = True
    for lp in (0.0, 0.5, 1.0, 2.0):
        got = sequence_scores(logps, mask, length_penalty=lp)
        assert got.shape == (3, 4)
        for b in range(3):
            for k in range(4):
                real = [x for x, m in zip(logps[b, k].tolist(), mask[b, k].tolist()) if m]
                assert got[b, k].item() == pytest.approx(sum(real) / len(real) ** lp, rel=1e-12)
        garbage = torch.where(mask, logps, torch.tensor(math.nan, dtype=torch.float64))
        garbage[..., 1] = torch.where(mask[..., 1], garbage[..., 1], torch.tensor(-math.inf, dtype=torch.float64))
        padded = torch.cat([garbage, torch.full((3, 4, 2), 1e30, dtype=torch.float64)], -1)
        padded_mask = torch.cat([mask, torch.zeros(3, 4, 2, dtype=torch.bool)], -1)
        assert torch.equal(sequence_scores(padded, padded_mask, lp), got)


def test_sequence_scores_docstring_example_and_empty_row():
    logps = torch.tensor([[-1.0, -2.0, -3.0], [5.0, math.nan, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert sequence_scores(logps, mask, 0.0).tolist() == [-3.0, 0.0]
    assert sequence_scores(logps, mask, 1.0).tolist() == [-1.5, 0.0]
    assert sequence_scores(logps, mask, 2.0).tolist() == [-0.75, 0.0]
    with pytest.raises(ValueError):
        sequence_scores(logps, mask[:, :2])


def test_sequence_scores_gradient_only_on_real_tokens():
    logps = torch.full((2, 5), -1.0, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    sequence_scores(logps, mask, 1.0).sum().backward()
    expected = torch.tensor([[1 / 3] * 3 + [0, 0], [1.0, 0, 0, 0, 0]])
    assert torch.allclose(logps.grad, expected)


# ---------------------------------------------------------------------------- against a loop


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_matches_loop(loss_type, beta):
    pc, pr, rc, rr = random_logps(int(beta * 10))
    losses, ch, rj = dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type)
    exp_l, exp_c, exp_r = loop_dpo(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), beta, loss_type)
    assert losses.tolist() == pytest.approx(exp_l, rel=1e-10)
    assert ch.tolist() == pytest.approx(exp_c, rel=1e-10)
    assert rj.tolist() == pytest.approx(exp_r, rel=1e-10)
    if loss_type == "hinge":                       # the case mixes active and satisfied hinges
        assert 0 < sum(x == 0 for x in exp_l) < len(exp_l)


@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_conservative_dpo_matches_loop(eps):
    pc, pr, rc, rr = random_logps(7)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.3, label_smoothing=eps)
    exp_l, _, _ = loop_dpo(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist(), 0.3, "sigmoid", eps)
    assert losses.tolist() == pytest.approx(exp_l, rel=1e-10)


def test_reference_free_matches_loop_with_zero_reference():
    pc, pr, _, _ = random_logps(3)
    zeros = [0.0] * len(pc)
    for loss_type in ("sigmoid", "hinge", "ipo"):
        losses, ch, rj = dpo_loss(pc, pr, None, None, beta=0.2, reference_free=True, loss_type=loss_type)
        exp_l, exp_c, exp_r = loop_dpo(pc.tolist(), pr.tolist(), zeros, zeros, 0.2, loss_type)
        assert losses.tolist() == pytest.approx(exp_l, rel=1e-10)
        # rewards use the same (uniform) reference as the loss: their difference is beta * Delta
        assert ch.tolist() == pytest.approx(exp_c, rel=1e-10)
        assert (ch - rj).tolist() == pytest.approx([0.2 * (a - b) for a, b in zip(pc.tolist(), pr.tolist())])


# ---------------------------------------------------------------------------- hand-worked numbers


def test_docstring_worked_example():
    pc, pr, rc, rr = (torch.tensor([x], dtype=torch.float64) for x in (-10.0, -12.0, -11.0, -11.0))
    losses, ch, rj = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert losses.item() == pytest.approx(math.log1p(math.exp(-0.2)), rel=1e-12)
    assert losses.item() == pytest.approx(0.5981, abs=1e-4)
    assert ch.item() == pytest.approx(0.1) and rj.item() == pytest.approx(-0.1)
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1)
    assert smoothed.item() == pytest.approx(0.6181, abs=1e-4)
    assert dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="hinge")[0].item() == pytest.approx(0.8)
    assert dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="ipo")[0].item() == pytest.approx(9.0)


def test_step_zero_policy_equals_reference():
    pc, pr, _, _ = random_logps(11)
    losses, ch, rj = dpo_loss(pc, pr, pc.clone(), pr.clone(), beta=0.1)
    assert torch.allclose(losses, torch.full_like(losses, math.log(2)), rtol=0, atol=1e-15)
    assert (ch == 0).all() and (rj == 0).all()


# ---------------------------------------------------------------------------- beta -> 0


@pytest.mark.parametrize("beta", [1e-2, 1e-3, 1e-4])
def test_small_beta_expansion(beta):
    pc, pr, rc, rr = random_logps(5)
    for reference_free in (True, False):
        losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=beta, reference_free=reference_free)
        x = (pc - pr) if reference_free else (pc - pr) - (rc - rr)
        # -log sigma(bx) = log 2 - bx/2 + (bx)^2/8 + O(b^4): the remainder after two terms is ~ (bx)^2/8
        remainder = losses - (math.log(2) - beta * x / 2)
        assert torch.allclose(remainder, (beta * x) ** 2 / 8, rtol=0.02, atol=1e-15)


def test_small_beta_gradient_raises_the_logprob_margin_and_ignores_the_reference():
    pc, pr, rc, rr = random_logps(6)
    beta = 1e-4
    grads = []
    for reference_free in (True, False):
        c, r = pc.clone().requires_grad_(), pr.clone().requires_grad_()
        dpo_loss(c, r, rc, rr, beta=beta, reference_free=reference_free)[0].sum().backward()
        # gradient descent moves log pi(y_w) up and log pi(y_l) down by beta/2 per pair
        # (exactly -beta sigma(-beta Delta) = -beta/2 (1 - beta Delta/2 + ...), |beta Delta| < 4e-3 here)
        assert torch.allclose(c.grad, torch.full_like(c.grad, -beta / 2), rtol=5e-3)
        assert torch.allclose(r.grad, torch.full_like(r.grad, beta / 2), rtol=5e-3)
        grads.append(torch.cat([c.grad, r.grad]))
    # with and without the reference, the same direction: the reference no longer matters
    assert torch.allclose(grads[0], grads[1], rtol=5e-3)
    # at beta = 1 it does matter: the per-pair weight sigma(-beta Delta) depends on the reference
    big = []
    for reference_free in (True, False):
        c = pc.clone().requires_grad_()
        dpo_loss(c, pr, rc, rr, beta=1.0, reference_free=reference_free)[0].sum().backward()
        big.append(c.grad)
    assert not torch.allclose(big[0], big[1], rtol=0.1)


# ---------------------------------------------------------------------------- sum vs average


def test_sum_versus_average_via_sequence_scores():
    g = torch.Generator().manual_seed(2)
    tok = [-torch.rand(4, 8, generator=g, dtype=torch.float64) * 3 for _ in range(4)]
    masks = [torch.rand(4, 8, generator=g) < 0.7 for _ in range(2)]
    for m in masks:
        m[:, 0] = True
    mc, mr = masks
    for lp in (0.0, 1.0):
        seq = [sequence_scores(t, m, lp) for t, m in zip(tok, (mc, mr, mc, mr))]
        losses, ch, _ = dpo_loss(*seq, beta=0.5)
        for b in range(4):
            n_c, n_r = mc[b].sum().item(), mr[b].sum().item()
            s = [(t[b] * m[b]).sum().item() for t, m in zip(tok, (mc, mr, mc, mr))]
            if lp == 1.0:                              # dpo_use_average: per-token means
                s = [s[0] / n_c, s[1] / n_r, s[2] / n_c, s[3] / n_r]
            delta = (s[0] - s[1]) - (s[2] - s[3])
            assert losses[b].item() == pytest.approx(-log_sigmoid(0.5 * delta), rel=1e-10)
            assert ch[b].item() == pytest.approx(0.5 * (s[0] - s[2]), rel=1e-10)


# ---------------------------------------------------------------------------- optimisation


def accuracy(chosen_rewards, rejected_rewards):
    return (chosen_rewards > rejected_rewards).double().mean().item()


def test_free_logits_accuracy_rises():
    """Free per-example logps as the 'policy': DPO must order every pair, starting from ties."""
    torch.manual_seed(0)
    ref_c, ref_r = -5 - 5 * torch.rand(32), -5 - 5 * torch.rand(32)
    pc, pr = ref_c.clone().requires_grad_(), ref_r.clone().requires_grad_()
    opt = torch.optim.SGD([pc, pr], lr=1.0)
    first = None
    for _ in range(50):
        losses, ch, rj = dpo_loss(pc, pr, ref_c, ref_r, beta=0.1)
        first = (losses.mean().item(), accuracy(ch, rj)) if first is None else first
        opt.zero_grad()
        losses.sum().backward()
        opt.step()
    losses, ch, rj = dpo_loss(pc, pr, ref_c, ref_r, beta=0.1)
    assert first == (pytest.approx(math.log(2)), 0.0)
    assert accuracy(ch, rj) == 1.0
    assert losses.mean().item() < first[0] - 0.1


def synthetic_preferences(n, d, V, L, u, g):
    """n prompts x (features), two responses of 2..L tokens each (the same length within a pair, padded
    to L); the one with more total token utility u wins."""
    x = torch.randn(n, d, generator=g)
    ys = torch.randint(0, V, (2, n, L), generator=g)
    masks = (torch.arange(L) < torch.randint(2, L + 1, (n, 1), generator=g)).expand(2, n, L)
    utility = (u[ys] * masks).sum(-1)                                   # (2, n)
    first_wins = utility[0] > utility[1]
    chosen = torch.where(first_wins[:, None], ys[0], ys[1]), torch.where(first_wins[:, None], masks[0], masks[1])
    rejected = torch.where(first_wins[:, None], ys[1], ys[0]), torch.where(first_wins[:, None], masks[1], masks[0])
    return x, chosen, rejected


def test_linear_policy_learns_held_out_preferences():
    """A tiny 'language model': every response token is drawn from softmax(W x + b). The hidden
    preference prefers responses with more total token utility u. DPO on 256 training pairs must
    make the implicit reward order held-out pairs (new prompts, new responses) correctly.
    (Pairs share a length because a softmax policy's log-ratio per token is c u_v - log Z shift:
    with unequal lengths the implicit reward carries a length term no policy here can cancel.)"""
    g = torch.Generator().manual_seed(0)
    d, V, L = 4, 8, 6
    u = torch.randn(V, generator=g)
    train, test = synthetic_preferences(256, d, V, L, u, g), synthetic_preferences(256, d, V, L, u, g)
    W0, b0 = 0.3 * torch.randn(V, d, generator=g), torch.zeros(V)
    W, b = W0.clone().requires_grad_(), b0.clone().requires_grad_()

    def seq_logps(W, b, x, ys, mask):
        token_logps = torch.log_softmax(x @ W.T + b, -1)                          # (n, V)
        return sequence_scores(token_logps.gather(1, ys), mask, length_penalty=0)  # summed, as DPO

    def evaluate(data):
        x, (yc, mc), (yr, mr) = data
        with torch.no_grad():
            ref = seq_logps(W0, b0, x, yc, mc), seq_logps(W0, b0, x, yr, mr)
        pol = seq_logps(W, b, x, yc, mc), seq_logps(W, b, x, yr, mr)
        return dpo_loss(pol[0], pol[1], ref[0], ref[1], beta=0.5)

    before = evaluate(test)
    opt = torch.optim.Adam([W, b], lr=0.05)
    for _ in range(150):
        losses, _, _ = evaluate(train)
        opt.zero_grad()
        losses.mean().backward()
        opt.step()
    after = evaluate(test)
    assert accuracy(*before[1:]) == 0.0                                  # all ties at step 0
    assert accuracy(*after[1:]) > 0.85                                  # 0.945 measured
    assert after[0].mean().item() < before[0].mean().item() - 0.1
    # Only the margin is optimised: here both log-probabilities fall (every response token is one of 8,
    # and the policy sharpens onto the few best), so the chosen reward ends up negative too.
    chosen, rejected = after[1].mean().item(), after[2].mean().item()
    assert chosen < 0 and chosen - rejected > 1


# ---------------------------------------------------------------------------- errors


def test_bad_arguments():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="sigmoid, hinge, ipo"):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="kto")
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.0)
    with pytest.raises(ValueError):
        dpo_loss(x, x, None, None, beta=0.1)               # a reference is needed unless reference_free
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError):
        dpo_loss(torch.zeros(3, 5), torch.zeros(3, 5), torch.zeros(3, 5), torch.zeros(3, 5), beta=0.1)
    with pytest.raises(ValueError):
        dpo_loss(x, torch.zeros(4), x, x, beta=0.1)
