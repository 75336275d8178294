"""docs/wgan_lambda.png: wgan_gp_cifar.py with --lambda 1 and --lambda 10 side by side against
generator steps: FID-2k of each checkpoint (5,000 training images), the critic's Wasserstein
estimate and the gradient norm at the interpolates (each the mean of one epoch's log rows). The
numbers are in wgan_lambda.csv; how they were made: wgan_gp_cifar.md.

Run: python docs/wgan_lambda.py
"""

import csv
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PANELS = [("fid2k_train", "FID-2k vs 5,000 train images"),
          ("wasserstein", "Wasserstein estimate E[C(x)] - E[C(G(z))]"),
          ("grad_norm", "gradient norm at the interpolates (target 1)")]
COLOURS = {"1": "tab:red", "10": "tab:green"}


def main():
    series = {}
    with open(os.path.join(HERE, "wgan_lambda.csv"), newline="") as f:
        for row in csv.DictReader(f):
            key = (row["lambda"], row["metric"])
            series.setdefault(key, []).append((int(row["step"]), float(row["value"])))
    fig, axes = plt.subplots(1, len(PANELS), figsize=(14, 4))
    for ax, (metric, title) in zip(axes, PANELS):
        for lam, colour in COLOURS.items():
            points = sorted(series.get((lam, metric), []))
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o", markersize=3, color=colour,
                        label=f"--lambda {lam}")
        if metric == "grad_norm":
            ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("generator steps (batch 64, 5 critic steps each)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("wgan_gp_cifar.py on CIFAR-10, 32 px, the paper's Adam (1e-4, (0, 0.9)): "
                 "the penalty weight at equal steps")
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "wgan_lambda.png"), dpi=100)
    print(os.path.join(HERE, "wgan_lambda.png"))


if __name__ == "__main__":
    main()
