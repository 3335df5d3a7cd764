"""The distillation losses as their reference implementations compute them, restated in PyTorch.

Each function restates one reference's formula with its quirks (written from the papers and
the public code named in each docstring); `make_loss_reference.py` evaluates them in float64
to build `losses_reference.npz`, which `tests/test_loss_parity.py` compares kdjax against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd(student, teacher, temperature):
    """Hinton KD as the tutorial and LS-KD's code write it: batchmean KL * T²."""
    log_q = F.log_softmax(student / temperature, dim=1)
    p = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_q, p, reduction="none").sum(1).mean() * temperature**2


def standardize(logits, eps=1e-7):
    """LS-KD's `normalize`: (z - mean) / (eps + std), torch's unbiased std."""
    return (logits - logits.mean(dim=-1, keepdim=True)) / (eps + logits.std(dim=-1, keepdim=True))


def dkd(student, teacher, labels, alpha, beta, temperature):
    """mdistiller's `dkd_loss`: binary TCKD via log of summed probabilities, NCKD with the -1000 mask."""
    gt = torch.zeros_like(student).scatter_(1, labels.unsqueeze(1), 1).bool()
    other = ~gt
    p_s = F.softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)

    def cat_mask(p):
        return torch.cat([(p * gt).sum(1, keepdim=True), (p * other).sum(1, keepdim=True)], dim=1)

    p_s, p_t = cat_mask(p_s), cat_mask(p_t)
    tckd = F.kl_div(torch.log(p_s), p_t, reduction="sum") * temperature**2 / labels.shape[0]
    p_t2 = F.softmax(teacher / temperature - 1000.0 * gt, dim=1)
    log_p_s2 = F.log_softmax(student / temperature - 1000.0 * gt, dim=1)
    nckd = F.kl_div(log_p_s2, p_t2, reduction="sum") * temperature**2 / labels.shape[0]
    return alpha * tckd + beta * nckd


def _pearson(a, b, eps=1e-8):
    a = a - a.mean(1).unsqueeze(1)
    b = b - b.mean(1).unsqueeze(1)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist(student, teacher, beta, gamma, temperature):
    """The official dist_kd.py: T² (β inter-class + γ intra-class) on softmaxes."""
    y_s = (student / temperature).softmax(dim=1)
    y_t = (teacher / temperature).softmax(dim=1)
    inter = 1 - _pearson(y_s, y_t).mean()
    intra = 1 - _pearson(y_s.transpose(0, 1), y_t.transpose(0, 1)).mean()
    return temperature**2 * (beta * inter + gamma * intra)


def gkd(student, teacher, beta, temperature):
    """TRL's `GKDTrainer.generalized_jsd_loss` on [positions, vocab], summed over the vocabulary, mean over positions."""
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    if beta == 0:
        jsd = F.kl_div(log_s, log_t, reduction="none", log_target=True)
    elif beta == 1:
        jsd = F.kl_div(log_t, log_s, reduction="none", log_target=True)
    else:
        b = torch.tensor(beta, dtype=log_s.dtype)
        log_m = torch.logsumexp(torch.stack([log_s + torch.log(1 - b), log_t + torch.log(b)]), dim=0)
        jsd = b * F.kl_div(log_m, log_t, reduction="none", log_target=True) + (1 - b) * F.kl_div(
            log_m, log_s, reduction="none", log_target=True)
    return jsd.sum() / student.shape[0]


def attention_transfer(student_nchw, teacher_nchw, p=2):
    """mdistiller's `single_stage_at_loss` (equal spatial size)."""
    def at(feat):
        return F.normalize(feat.pow(p).mean(1).reshape(feat.size(0), -1))

    return (at(student_nchw) - at(teacher_nchw)).pow(2).mean()


def _pdist(e, eps=1e-12):
    e_square = e.pow(2).sum(dim=1)
    prod = e @ e.t()
    res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps).sqrt().clone()
    res[range(len(e)), range(len(e))] = 0
    return res


def rkd_distance(student, teacher):
    """lenscloth/RKD's `RkdDistance` on flattened rows."""
    student, teacher = student.flatten(1), teacher.flatten(1)
    t_d = _pdist(teacher)
    t_d = t_d / t_d[t_d > 0].mean()
    d = _pdist(student)
    d = d / d[d > 0].mean()
    return F.smooth_l1_loss(d, t_d)


def rkd_angle(student, teacher):
    """lenscloth/RKD's `RKdAngle` on flattened rows."""
    student, teacher = student.flatten(1), teacher.flatten(1)

    def angles(x):
        diff = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(diff, diff.transpose(1, 2)).view(-1)

    return F.smooth_l1_loss(angles(student), angles(teacher))


def pkt(student, teacher, eps=1e-7):
    """mdistiller's PKT `cosine_similarity_loss` on flattened rows."""
    def conditional(x):
        x = x.flatten(1)
        x = x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)
        x = torch.where(x != x, torch.zeros_like(x), x)
        s = (x @ x.t() + 1.0) / 2.0
        return s / s.sum(dim=1, keepdim=True)

    p_s, p_t = conditional(student), conditional(teacher)
    return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))


def similarity_preserving(student, teacher):
    """mdistiller's `sp_loss` for one pair of maps."""
    bsz = student.shape[0]
    g_s = F.normalize(student.reshape(bsz, -1) @ student.reshape(bsz, -1).t())
    g_t = F.normalize(teacher.reshape(bsz, -1) @ teacher.reshape(bsz, -1).t())
    return ((g_t - g_s) ** 2).sum() / (bsz * bsz)


def cross_entropy(logits, labels, label_smoothing=0.0):
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def liger_jsd(student_log_probs, teacher_log_probs, beta, labels=None, ignore_index=-100):
    """Liger-Kernel's `LigerJSD` (ops/jsd.py) elementwise: X = student, Y = teacher log-probs [BT, V].

    β = 0: P (Y - X) (forward KL); β = 1: Q (X - Y) (reverse KL); otherwise
    β P Y + (1 - β) Q X - M log M with M = β P + (1 - β) Q. Rows whose label is `ignore_index`
    contribute nothing; the sum is divided by the number of the other rows.
    """
    x, y = student_log_probs, teacher_log_probs
    q, p = x.exp(), y.exp()
    if beta == 0:
        loss = p * (y - x)
    elif beta == 1:
        loss = q * (x - y)
    else:
        m = beta * p + (1 - beta) * q
        loss = beta * p * y + (1 - beta) * q * x - m * m.log()
    if labels is None:
        return loss.sum() / x.shape[0]
    keep = labels != ignore_index
    return loss[keep].sum() / keep.sum()


def liger_fused_linear_jsd(student_input, student_weight, teacher_input, teacher_weight, labels, beta,
                           temperature, ignore_index=-100):
    """Liger's `LigerFusedLinearJSD` (ops/fused_linear_jsd.py): weights are torch `Linear` layouts [V, H]."""
    student = F.log_softmax(student_input @ student_weight.t() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_input @ teacher_weight.t() / temperature, dim=-1)
    return liger_jsd(student, teacher, beta, labels, ignore_index)


def liger_chunked_jsd(student_input, student_weight, teacher_input, teacher_weight, labels, beta, temperature,
                      weight_hard_loss, weight_soft_loss):
    """Liger's chunked-loss `LigerFusedLinearJSDLoss` without ignored labels: hard CE on the unscaled logits
    plus its `distillation_loss_fn` on the logits / T, each summed and divided by the token count. That
    function is TRL's formula (above) with the mixture taken as the log of the mean probability."""
    student_logits = student_input @ student_weight.t()
    teacher_logits = teacher_input @ teacher_weight.t()
    hard = F.cross_entropy(student_logits, labels, reduction="sum") / labels.shape[0]
    return weight_hard_loss * hard + weight_soft_loss * gkd(student_logits, teacher_logits, beta, temperature)


def liger_fused_linear_cross_entropy(hidden, weight, labels, ignore_index=-100):
    """Liger's `LigerFusedLinearCrossEntropyLoss` (mean over the non-ignored tokens)."""
    return F.cross_entropy(hidden @ weight.t(), labels, ignore_index=ignore_index)
