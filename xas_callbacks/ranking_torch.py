"""The ranking engine on a torch device (GPU for ~100,000 candidates).

:class:`TorchRankingEngine` builds its tables like :class:`~xas_callbacks.ranking.RankingEngine`
(numpy, on the CPU), moves them to ``device`` and does the per-point update and the posterior
there. Same model, same API, same results to float32 rounding. Deterministic on a given device
and library version: every reduction is over a fixed axis in a fixed order (no atomics).

Memory: the four tables take ``4 * W * G * N * 4`` bytes (W broadenings, G ~ 360 fine-grid
points): ~2.9 GB for 100,000 candidates and 5 broadenings; the statistics ``7 * W * O * N * 12``.
"""

from __future__ import annotations

import numpy as np

from xas_callbacks.ranking import RankingConfig, RankingEngine, _logsumexp

__all__ = ["TorchRankingEngine"]


class TorchRankingEngine(RankingEngine):
    """:class:`RankingEngine` whose tables and statistics live on a torch device.

    Parameters
    ----------
    names, energies, mean, std, config, log_prior
        As for :class:`RankingEngine`.
    device : str or torch.device, optional
        Default ``"cuda"`` when available, else ``"cpu"``.
    """

    def __init__(self, names, energies, mean, std=None, config: RankingConfig | None = None,
                 log_prior=None, device=None) -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        super().__init__(names, energies, mean, std, config=config, log_prior=log_prior,
                         dtype=np.float32)
        for attr in ("_M", "_dM", "_V", "_dV"):
            setattr(self, attr, torch.tensor(np.asarray(getattr(self, attr)), device=self.device))
        self.reset()

    def reset(self) -> None:
        torch = getattr(self, "_torch", None)
        if torch is None or not isinstance(self._M, torch.Tensor):
            return super().reset()
        W, _, N = self._M.shape
        O = self.offsets.size
        self._S = torch.zeros((7, W, O, N), dtype=torch.float64, device=self.device)
        self._Sblock = torch.zeros((7, W, O, N), dtype=torch.float32, device=self.device)
        self._flush_every = 16
        self._n_block = 0
        self.n_points = 0
        self.n_outside = 0
        self._active = None
        self._pts_E, self._pts_y, self._pts_v = [], [], []

    def add_point(self, energy: float, y: float, var: float) -> bool:
        energy, y, var = float(energy), float(y), float(var)
        if not (np.isfinite(energy) and np.isfinite(y) and np.isfinite(var) and var >= 0):
            self.n_outside += 1
            return False
        if not self.in_window(energy):
            self.n_outside += 1
            return False
        torch = self._torch
        pos = (energy + self.offsets[0] - self._g0) / self._h
        j = int(np.floor(pos))
        t = float(np.float32(pos - j))
        s, O = self._stride, self.offsets.size
        sl = slice(j, j + s * (O - 1) + 1, s)
        m = torch.addcmul(self._M[:, sl], self._dM[:, sl], torch.tensor(t, device=self.device))
        v = self._V[:, sl] + self._dV[:, sl] * t + float(np.float32(var + self.config.model_floor**2))
        w = torch.reciprocal(v)
        yy = float(np.float32(y))
        S = self._Sblock
        wm = w * m
        S[0] += w
        S[1] += wm
        S[2] += wm * m
        S[3] += w * yy
        S[4] += wm * yy
        S[5] += w * (yy * yy)
        S[6] += torch.log(w)
        self._n_block += 1
        if self._n_block >= self._flush_every:
            self._flush()
        self.n_points += 1
        self._pts_E.append(energy)
        self._pts_y.append(y)
        self._pts_v.append(var)
        return True

    def _flush(self) -> None:
        self._S += self._Sblock.double()
        self._Sblock.zero_()
        self._n_block = 0

    def _log_evidence_t(self, sl_b: slice, sl_o: slice):
        cfg = self.config
        S = self._S[:, sl_b, sl_o]
        if self._n_block:
            S = S + self._Sblock[:, sl_b, sl_o].double()
        (ma, sa), (mb, sb) = cfg.amplitude_prior, cfg.background_prior
        la, lb = 1.0 / sa**2, 1.0 / sb**2
        A11, A12, A22 = S[2] + la, S[1], S[0] + lb
        h1, h2 = S[4] + la * ma, S[3] + lb * mb
        det = A11 * A22 - A12 * A12
        quad = (A22 * h1 * h1 - 2.0 * A12 * h1 * h2 + A11 * h2 * h2) / det
        return (-0.5 * self.n_points * np.log(2 * np.pi) + 0.5 * S[6]
                + 0.5 * (np.log(la) + np.log(lb)) - 0.5 * self._torch.log(det)
                - 0.5 * (S[5] + la * ma * ma + lb * mb * mb - quad))

    def _log_evidence_won(self, sl_b: slice, sl_o: slice) -> np.ndarray:
        return self._log_evidence_t(sl_b, sl_o).cpu().numpy()

    def _evidence_and_cells(self, sl_b: slice, sl_o: slice) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        L = self._log_evidence_t(sl_b, sl_o)
        prior = (self._log_prior_offset[sl_o][None, :] + self._log_prior_broadening[sl_b][:, None])
        L = L + torch.from_numpy(prior).to(self.device)[:, :, None]
        N = L.shape[-1]
        flat = L.reshape(-1, N)
        mx = flat.max(dim=0).values
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        ex = torch.exp(flat - mx[None, :])
        logZ_c = (torch.log(ex.sum(dim=0)) + mx).cpu().numpy()
        total = _logsumexp(logZ_c + self._log_prior_cand)
        scale = torch.from_numpy(np.exp(mx.cpu().numpy() + self._log_prior_cand - total)).to(self.device)
        cell = (ex * scale[None, :]).sum(dim=1).reshape(L.shape[:2]).cpu().numpy()
        return logZ_c, cell

    def model_at(self, index: int, energy, offset: float, broadening: float):
        jb = int(np.argmin(np.abs(self.broadenings - broadening)))
        e = np.asarray(energy, dtype=float) + offset
        m = np.interp(e, self.grid, self._M[jb, :, index].cpu().numpy())
        v = np.interp(e, self.grid, self._V[jb, :, index].cpu().numpy())
        return m, np.sqrt(np.maximum(v, 0.0))
