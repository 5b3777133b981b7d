"""Golden sampling trajectories for the engine's schedulers (test/fixtures/schedulers.json).

diffusers cannot be installed here, so this file re-implements, in torch float32 and following diffusers'
code line by line, the parts of DDIMScheduler (eta 0), PNDMScheduler (skip_prk_steps=True) and
DPMSolverMultistepScheduler (its defaults: dpmsolver++, order 2, midpoint, lower_order_final, final sigma 0)
that a Stable Diffusion pipeline uses: set_timesteps and step. Each case runs a fixed toy "model"
(model_output = c(t) * sample + base, c(t) = 0.05 + t / 2000) from a fixed start and records the
timesteps and the sample after every step.

Usage: /usr/bin/python3 test/support/scheduler_reference.py test/fixtures/schedulers.json
"""

import json
import sys

import numpy as np
import torch

SIZE = 16


def alphas_cumprod(cfg):
    n = cfg["numTrainTimesteps"]
    if cfg["betaSchedule"] == "scaled_linear":
        betas = torch.linspace(cfg["betaStart"] ** 0.5, cfg["betaEnd"] ** 0.5, n, dtype=torch.float32) ** 2
    elif cfg["betaSchedule"] == "linear":
        betas = torch.linspace(cfg["betaStart"], cfg["betaEnd"], n, dtype=torch.float32)
    else:
        raise ValueError(cfg["betaSchedule"])
    return torch.cumprod(1.0 - betas, dim=0)


def spaced(cfg, steps, spacing, offset):
    """DDIMScheduler / PNDMScheduler set_timesteps' spacing, ascending."""
    n = cfg["numTrainTimesteps"]
    if spacing == "linspace":
        return np.linspace(0, n - 1, steps).round().astype(np.int64)
    if spacing == "leading":
        ratio = n // steps
        return (np.arange(0, steps) * ratio).round().astype(np.int64) + offset
    ratio = n / steps
    return np.round(np.arange(n, 0, -ratio))[::-1].astype(np.int64) - 1


class DDIM:
    def __init__(self, cfg, steps, opts):
        self.cfg, self.steps = cfg, steps
        self.ac = alphas_cumprod(cfg)
        self.final = torch.tensor(1.0) if opts.get("setAlphaToOne", True) else self.ac[0]
        self.timesteps = spaced(cfg, steps, opts.get("timestepSpacing", "leading"), opts.get("stepsOffset", 0))[::-1]

    def step(self, model_output, t, sample):
        prev_t = t - self.cfg["numTrainTimesteps"] // self.steps
        a_t = self.ac[t]
        a_prev = self.ac[prev_t] if prev_t >= 0 else self.final
        b_t = 1 - a_t
        if self.cfg["predictionType"] == "epsilon":
            x0 = (sample - b_t ** 0.5 * model_output) / a_t ** 0.5
            eps = model_output
        elif self.cfg["predictionType"] == "v_prediction":
            x0 = (a_t ** 0.5) * sample - (b_t ** 0.5) * model_output
            eps = (a_t ** 0.5) * model_output + (b_t ** 0.5) * sample
        else:
            x0 = model_output
            eps = (sample - a_t ** 0.5 * x0) / b_t ** 0.5
        direction = (1 - a_prev) ** 0.5 * eps
        return a_prev ** 0.5 * x0 + direction


class PNDM:
    def __init__(self, cfg, steps, opts):
        self.cfg, self.steps = cfg, steps
        self.ac = alphas_cumprod(cfg)
        self.final = torch.tensor(1.0) if opts.get("setAlphaToOne", False) else self.ac[0]
        ts = spaced(cfg, steps, opts.get("timestepSpacing", "leading"), opts.get("stepsOffset", 0))
        self.timesteps = np.concatenate([ts[:-1], ts[-2:-1], ts[-1:]])[::-1].copy()
        self.ets, self.counter, self.cur_sample = [], 0, None

    def step(self, model_output, timestep, sample):
        prev_timestep = timestep - self.cfg["numTrainTimesteps"] // self.steps
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_timestep = timestep
            timestep = timestep + self.cfg["numTrainTimesteps"] // self.steps
        if len(self.ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(self.ets) == 1 and self.counter == 1:
            model_output = (model_output + self.ets[-1]) / 2
            sample = self.cur_sample
            self.cur_sample = None
        elif len(self.ets) == 2:
            model_output = (3 * self.ets[-1] - self.ets[-2]) / 2
        elif len(self.ets) == 3:
            model_output = (23 * self.ets[-1] - 16 * self.ets[-2] + 5 * self.ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * self.ets[-1] - 59 * self.ets[-2] + 37 * self.ets[-3] - 9 * self.ets[-4])
        prev = self._get_prev_sample(sample, timestep, prev_timestep, model_output)
        self.counter += 1
        return prev

    def _get_prev_sample(self, sample, timestep, prev_timestep, model_output):
        a_t = self.ac[timestep]
        a_prev = self.ac[prev_timestep] if prev_timestep >= 0 else self.final
        b_t = 1 - a_t
        b_prev = 1 - a_prev
        if self.cfg["predictionType"] == "v_prediction":
            model_output = (a_t ** 0.5) * model_output + (b_t ** 0.5) * sample
        sample_coeff = (a_prev / a_t) ** 0.5
        denom = a_t * b_prev ** 0.5 + (a_t * b_t * a_prev) ** 0.5
        return sample_coeff * sample - (a_prev - a_t) * model_output / denom


class DPMSolverPP:
    def __init__(self, cfg, steps, opts):
        self.cfg = cfg
        ac = alphas_cumprod(cfg)
        n = cfg["numTrainTimesteps"]
        spacing = opts.get("timestepSpacing", "linspace")
        if spacing == "linspace":
            ts = np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64)
        elif spacing == "leading":
            ratio = n // (steps + 1)
            ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64) + opts.get("stepsOffset", 0)
        else:
            ratio = n / steps
            ts = np.arange(n, 0, -ratio).round().copy().astype(np.int64) - 1
        sigmas = np.array(((1 - ac) / ac) ** 0.5)
        sigmas = np.interp(ts, np.arange(0, len(sigmas)), sigmas)
        self.sigmas = torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))
        self.timesteps = ts
        self.outputs = [None, None]
        self.lower_order_nums = 0
        self.i = 0

    @staticmethod
    def alpha_sigma(sigma):
        alpha_t = 1 / ((sigma ** 2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def step(self, model_output, t, sample):
        i = self.i
        alpha_t, sigma_t = self.alpha_sigma(self.sigmas[i])
        if self.cfg["predictionType"] == "epsilon":
            x0 = (sample - sigma_t * model_output) / alpha_t
        elif self.cfg["predictionType"] == "v_prediction":
            x0 = alpha_t * sample - sigma_t * model_output
        else:
            x0 = model_output
        self.outputs = [self.outputs[1], x0]
        lower_order_final = i == len(self.timesteps) - 1  # final_sigmas_type "zero"
        if self.lower_order_nums < 1 or lower_order_final:
            a_t, s_t = self.alpha_sigma(self.sigmas[i + 1])
            a_s, s_s = self.alpha_sigma(self.sigmas[i])
            h = (torch.log(a_t) - torch.log(s_t)) - (torch.log(a_s) - torch.log(s_s))
            prev = (s_t / s_s) * sample - (a_t * (torch.exp(-h) - 1.0)) * x0
        else:
            a_t, s_t = self.alpha_sigma(self.sigmas[i + 1])
            a_s0, s_s0 = self.alpha_sigma(self.sigmas[i])
            a_s1, s_s1 = self.alpha_sigma(self.sigmas[i - 1])
            l_t = torch.log(a_t) - torch.log(s_t)
            l_s0 = torch.log(a_s0) - torch.log(s_s0)
            l_s1 = torch.log(a_s1) - torch.log(s_s1)
            m0, m1 = self.outputs[-1], self.outputs[-2]
            h, h_0 = l_t - l_s0, l_s0 - l_s1
            r0 = h_0 / h
            d0, d1 = m0, (1.0 / r0) * (m0 - m1)
            prev = (s_t / s_s0) * sample - (a_t * (torch.exp(-h) - 1.0)) * d0 - 0.5 * (a_t * (torch.exp(-h) - 1.0)) * d1
        if self.lower_order_nums < 2:
            self.lower_order_nums += 1
        self.i += 1
        return prev


SCHEDULERS = {"ddim": DDIM, "pndm": PNDM, "dpm++": DPMSolverPP}
SD15 = {"numTrainTimesteps": 1000, "betaSchedule": "scaled_linear", "betaStart": 0.00085, "betaEnd": 0.012,
        "predictionType": "epsilon"}
# Stable Diffusion 1.5's scheduler_config.json: steps_offset 1, set_alpha_to_one false, leading spacing.
SD15_OPTS = {"stepsOffset": 1, "setAlphaToOne": False, "timestepSpacing": "leading"}
CASES = [
    ("ddim", SD15, SD15_OPTS, 10),
    ("pndm", SD15, SD15_OPTS, 10),
    ("pndm", SD15, SD15_OPTS, 50),
    ("pndm", {**SD15, "predictionType": "v_prediction"}, {"timestepSpacing": "linspace"}, 7),
    ("pndm", SD15, {"timestepSpacing": "trailing"}, 5),
    ("dpm++", SD15, {}, 10),
    ("dpm++", SD15, {}, 50),
    ("dpm++", {**SD15, "predictionType": "v_prediction"}, {}, 20),
    ("dpm++", SD15, {"timestepSpacing": "leading", "stepsOffset": 1}, 12),
]


def main():
    out = sys.argv[1]
    start = torch.from_numpy(np.sin(np.arange(SIZE) * 0.7).astype(np.float32) * 1.5)
    base = torch.from_numpy(np.cos(np.arange(SIZE) * 1.3).astype(np.float32) * 0.3)
    cases = []
    for name, cfg, opts, steps in CASES:
        s = SCHEDULERS[name](cfg, steps, opts)
        sample = start.clone()
        trajectory = []
        for t in s.timesteps:
            c = torch.tensor(0.05, dtype=torch.float32) + torch.tensor(float(t), dtype=torch.float32) / 2000
            sample = s.step(c * sample + base, int(t), sample)
            trajectory.append([float(v) for v in sample])
        cases.append({"scheduler": name, "config": cfg, "options": opts, "steps": steps,
                      "timesteps": [int(t) for t in s.timesteps], "samples": trajectory})
    with open(out, "w") as f:
        json.dump({"about": __doc__.strip().splitlines()[0], "start": [float(v) for v in start],
                   "base": [float(v) for v in base], "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
