"""PyTorch peer of bench/step.ts. `--net deeplab`: the same small DeepLab-v2 (one bottleneck per ResNet layer, stem 16,
planes 8/16/32/64, OS 8 with layer3 d2 / layer4 d4, frozen BN or with `--bn trainable` nn.BatchNorm2d in training
mode, 4-branch ASPP d 6/12/18/24), one SGD
training step (forward, bilinear upsample with align_corners=True, CE with ignore 255, backward,
momentum + weight decay, classifier x10). `--net plain`: bench/plain-net.ts's six 3x3 convolutions
(three of stride 2, 32-128 channels, no dilation) and a 1x1 classifier, the same step. Prints one JSON
line. Used only as a benchmark peer."""
import argparse, json, time
import torch
import torch.nn as nn
import torch.nn.functional as F


class FrozenBN(nn.Module):
    def __init__(self, c):
        super().__init__()
        for name, v in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.0), ("running_var", 1.0)):
            self.register_buffer(name, torch.full((c,), v))

    def forward(self, x):
        scale = self.weight * self.running_var.rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)


BN = FrozenBN  # or nn.BatchNorm2d (--bn trainable): set in main() before the model is built


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride, dilation, downsample):
        super().__init__()
        out = planes * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), BN(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = BN(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), BN(out)
        self.down = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), BN(out)) if downsample else None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class SmallDeeplab(nn.Module):
    def __init__(self, classes, blocks=(1, 1, 1, 1), stem=16, planes=(8, 16, 32, 64)):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, stem, 7, 2, 3, bias=False), BN(stem)
        layers, cin = [], stem
        for (stride, d_first, d_rest), n, p in zip(((1, 1, 1), (2, 1, 1), (1, 1, 2), (1, 2, 4)), blocks, planes):
            for i in range(n):
                first = i == 0
                layers.append(Bottleneck(cin, p, stride if first else 1, d_first if first else d_rest,
                                         first and (stride != 1 or cin != p * 4)))
                cin = p * 4
        self.layers = nn.Sequential(*layers)
        self.aspp = nn.ModuleList([nn.Conv2d(cin, classes, 3, padding=d, dilation=d) for d in (6, 12, 18, 24)])

    def forward(self, x):
        f = self.layers(F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1))
        return f, sum(c(f) for c in self.aspp)


class PlainNet(nn.Module):
    CONVS = ((3, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 1))

    def __init__(self, classes):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(i, o, 3, s, padding=1) for i, o, s in self.CONVS])
        self.aspp = nn.Conv2d(128, classes, 1)  # named like the DeepLab's classifier: the x10 group

    def forward(self, x):
        for c in self.convs:
            x = F.relu(c(x))
        return x, self.aspp(x)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", choices=("deeplab", "plain"), default="deeplab")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda where PyTorch has a GPU")
    ap.add_argument("--bn", choices=("frozen", "trainable"), default="frozen")
    a = ap.parse_args()
    global BN
    BN = FrozenBN if a.bn == "frozen" else nn.BatchNorm2d
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    model = (SmallDeeplab(a.classes) if a.net == "deeplab" else PlainNet(a.classes)).to(dev)
    backbone = [p for n, p in model.named_parameters() if not n.startswith("aspp")]
    opt = torch.optim.SGD([{"params": backbone, "lr": 1e-3}, {"params": model.aspp.parameters(), "lr": 1e-2}],
                          momentum=0.9, weight_decay=5e-4)
    x = torch.randn(a.batch, 3, a.height, a.width).to(dev)
    y = torch.randint(0, a.classes, (a.batch, a.height, a.width)).to(dev)

    def step():
        opt.zero_grad()
        _, logits = model(x)
        up = F.interpolate(logits, size=(a.height, a.width), mode="bilinear", align_corners=True)
        loss = F.cross_entropy(up, y, ignore_index=255)
        loss.backward()
        opt.step()
        return loss.item()  # waits for the device

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    print(json.dumps({"peer": f"pytorch {torch.__version__} {a.device}", "threads": torch.get_num_threads(),
                      "ms_per_step_median": times[len(times) // 2], "ms_per_step_min": times[0]}))


if __name__ == "__main__":
    main()
