"""docs/cifar_fid_steps.png: FID against generator steps of the three CIFAR-10 scripts
(wgan_gp_cifar also with the paper's optimiser, acgan_cifar also at width 96), with published
points beside them. Our measurements are in cifar_fid_steps.csv (script, generator step, metric,
value; how each was made: docs/dcgan_cifar.md, acgan_cifar.md, wgan_gp_cifar.md); the published
points are below, each checked against its source (StudioGAN's 2020 logs, logs/CIFAR10/*.log;
TTUR's Results/figures).

Run: python docs/cifar_fid_steps.py
"""

import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# wgan_gp_cifar with the paper's optimiser and acgan_cifar with wider networks, beside the defaults
PAPER_ADAM = "wgan_gp_cifar --lr 1e-4 --beta1 0 --beta2 0.9"
WIDE_ACGAN = "acgan_cifar --ngf 96 --ndf 96"
COLOURS = {"dcgan_cifar": "tab:blue", "acgan_cifar": "tab:orange", "wgan_gp_cifar": "tab:green",
           PAPER_ADAM: "tab:olive", WIDE_ACGAN: "tab:red"}
# (label, colour, marker, [(generator step, FID)]); steps in thousands of generator updates
PUBLISHED = [
    ("StudioGAN 2020 DCGAN (batch 64, 2 D steps per G step; 10k samples vs test)", "tab:blue", "s",
     [(4000, 92.6), (6000, 75.6), (10000, 65.3), (20000, 60.3), (40000, 55.7), (42000, 49.0)]),
    ("TTUR DCGAN, lr 2e-4 (batch 64; 50k samples vs train)", "tab:blue", "^",
     [(10000, 84.8), (20000, 56.2), (50000, 46.9)]),
    ("TTUR DCGAN, two time-scale (batch 64; 50k samples vs train)", "tab:blue", "v",
     [(10000, 66.9), (20000, 47.7)]),
    ("StudioGAN 2020 ACGAN, ResNet (10k samples vs test)", "tab:orange", "s",
     [(10000, 48.6), (14000, 45.6), (18000, 146.4)]),
    ("StudioGAN 2020 WGAN-GP, ResNet, 5 critic steps (10k samples vs test)", "tab:green", "s",
     [(10000, 41.3), (20000, 35.4)]),
]
METRICS = {"fid2k_train": ("FID-2k vs 5,000 train images (curve, picks the best)", "-", "o"),
           "fid10k_test": ("FID-10k vs the 10,000 test images (reported)", "none", "*")}


def read_measured(path):
    series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["script"], row["metric"])
            series.setdefault(key, []).append((int(row["step"]), float(row["value"])))
    return {key: sorted(points) for key, points in series.items()}


def main():
    measured = read_measured(os.path.join(HERE, "cifar_fid_steps.csv"))
    fig, ax = plt.subplots(figsize=(10, 6))
    for (script, metric), points in sorted(measured.items()):
        label, line, marker = METRICS[metric]
        steps, values = zip(*points)
        ax.plot(steps, values, linestyle=line, marker=marker, color=COLOURS[script],
                markersize=9 if marker == "*" else 4, label=f"ours: {script}, {label}")
    for label, colour, marker, points in PUBLISHED:
        steps, values = zip(*points)
        ax.scatter(steps, values, marker=marker, facecolors="none", edgecolors=colour, s=60,
                   label=label)
    ax.set_xlabel("generator steps (batch 64)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_ylim(0, 200)
    ax.set_title("CIFAR-10, 32 px: FID against generator steps (ours: 2-core CPU, bf16)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "cifar_fid_steps.png"), dpi=110)
    print(os.path.join(HERE, "cifar_fid_steps.png"))


if __name__ == "__main__":
    main()
