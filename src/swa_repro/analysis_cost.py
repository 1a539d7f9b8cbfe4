"""GPU-hour estimates of the figure analyses, from the passes over the data that they make.

An analysis is counted in image-passes of four kinds:
    forward    evaluation in eval mode (train and test metrics, a loss at a perturbed point)
    refresh    the BN refresh: a forward pass in train mode over the augmented training set
    gradient   forward + backward (training, the gradient of a loss)
    hvp        forward + backward + double backward (a Hessian-vector product)
N training and M test images, O origins; per analysis:
    point (plane, line, rays, trajectory):  N refresh + N + M forward (points.RunContext.evaluate)
    fge:        epochs x N gradient, then every sample (epochs / cycle_epochs) as a point
    hessian, per origin (flatness.hessian_of_origin): N refresh + 2 M (test before and after it)
                + images forward; (2 EIGSH_PRODUCTS + top_k + 1 + probes) x images hvp (eigsh for
                the top k and the smallest eigenvalue, one product per reported residual, the
                probes) + density_runs x density_steps x density_images hvp
    sharpness, per origin: N refresh; images x (1 + (1 + avg_samples x |rho_avg|) +
                |rho_max| x (max_steps + 1) + (1 + |rho_sam|)) forward and images x (|rho_max| x
                max_steps + 1) gradient (sharpness.py: the train metrics, the noise draws,
                Auto-PGD's steps, SAM's step, each with the loss at w)
    around, per origin: N refresh + G^2 x images forward
ARPACK's number of products is not known beforehand: EIGSH_PRODUCTS is an assumption (about 5
restarts of eigsh's default 20 Lanczos vectors); the hessian .npz records the true count of each
origin (hvp_products).

Seconds from image-passes, either
  - measured: a benchmark JSON (sweep.load_bench: by default the GPU one docs/performance.md
    records) that measured the model in fp32 with the authors' batches, as the analyses run:
    forward at its eval_images_per_s, refresh at bn_refresh_images_per_s, gradient at
    train_images_per_s (an SGD step: slightly more than a gradient), hvp at train_images_per_s /
    hvp_over_gradient (its hessian entry; without one, HVP_OVER_GRADIENT assumed); or
  - FLOPs: 2 MACs per forward or refresh image, 6 per gradient, 6 x HVP_OVER_GRADIENT per hvp,
    at an assumed sustained TFLOP/s (the sweep's --tflops default).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from swa_repro.analysis.flatness import AroundSettings, HessianSettings, SharpnessSettings
from swa_repro.fast import Speed

EIGSH_PRODUCTS = 100  # Hessian-vector products of one eigsh call (assumed; see the docstring)
HVP_OVER_GRADIENT = 4.0  # assumed where not measured (CPU: 3.55-4.96, docs/performance.md)
TFLOPS = 30.0  # sustained TFLOP/s of the FLOP-count estimate (as sweep's --tflops default)


@dataclass(frozen=True)
class Passes:
    """Image-passes of each kind."""

    forward: float = 0.0
    refresh: float = 0.0
    gradient: float = 0.0
    hvp: float = 0.0

    def __add__(self, other: Passes) -> Passes:
        return Passes(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __mul__(self, k: float) -> Passes:
        return Passes(*(getattr(self, f.name) * k for f in fields(self)))


@dataclass(frozen=True)
class Rates:
    """Images per second of each kind of pass, and where they come from."""

    forward: float
    refresh: float
    gradient: float
    hvp: float
    basis: str

    def seconds(self, passes: Passes) -> float:
        return sum(getattr(passes, f.name) / getattr(self, f.name) for f in fields(Passes))


def point(n_train: int, n_test: int) -> Passes:
    """One evaluated point: BN refresh, train and test metrics."""
    return Passes(forward=n_train + n_test, refresh=n_train)


def fge(epochs: int, cycle_epochs: int, n_train: int, n_test: int) -> Passes:
    return Passes(gradient=epochs * n_train) + point(n_train, n_test) * (epochs // cycle_epochs)


def hessian(s: HessianSettings, n_train: int, n_test: int) -> Passes:
    """One origin of the hessian analysis."""
    images = s.images or n_train
    density = s.density_images or n_train
    products = 2 * EIGSH_PRODUCTS + s.top_k + 1 + s.probes
    return Passes(
        forward=2 * n_test + images,
        refresh=n_train,
        hvp=products * images + s.density_runs * s.density_steps * density,
    )


def sharpness(s: SharpnessSettings, n_train: int) -> Passes:
    """One origin of the sharpness analysis."""
    evaluations = 1 + (1 + s.avg_samples * len(s.rho_avg)) + len(s.rho_max) * (s.max_steps + 1)
    evaluations += 1 + len(s.rho_sam)
    gradients = len(s.rho_max) * s.max_steps + 1
    return Passes(forward=s.images * evaluations, refresh=n_train, gradient=s.images * gradients)


def around(s: AroundSettings, n_train: int) -> Passes:
    """One origin of the around analysis."""
    return Passes(forward=s.grid_points**2 * (s.images or n_train), refresh=n_train)


def flop_rates(macs: float, tflops: float = TFLOPS) -> Rates:
    """Images/s of each pass from the model's MACs per image at `tflops` sustained."""
    per_s = tflops * 1e12
    return Rates(
        forward=per_s / (2 * macs),
        refresh=per_s / (2 * macs),
        gradient=per_s / (6 * macs),
        hvp=per_s / (6 * macs * HVP_OVER_GRADIENT),
        basis=f"FLOPs at an assumed {tflops:g} TFLOP/s, a Hessian-vector product assumed "
        f"{HVP_OVER_GRADIENT:g}x a gradient",
    )


def measured_rates(bench: dict | None, cfg) -> Rates | None:
    """Images/s measured by a benchmark (sweep.load_bench) for the run's model, batch size and
    CIFAR-sized images in fp32 (speed faithful), as the analyses run; None if it has no such
    figures."""
    model = cfg.model.name
    if bench is None or model not in bench["rates"] or bench["speed"] != Speed().as_dict():
        return None
    if cfg.optim.batch_size != bench["batch_size"] or cfg.data.get("image_size", 32) != 32:
        return None
    r = bench["rates"][model]
    ratio = r.get("hvp_over_gradient")
    hvp = f"{ratio:.2f}x a gradient, measured" if ratio else f"assumed {HVP_OVER_GRADIENT:g}x"
    return Rates(
        forward=r["eval_images_per_s"],
        refresh=r["bn_refresh_images_per_s"],
        gradient=r["train_images_per_s"],
        hvp=r["train_images_per_s"] / (ratio or HVP_OVER_GRADIENT),
        basis=f"measured by {bench['path'].name} on {bench['device']} (Hessian-vector "
        f"product {hvp})",
    )
