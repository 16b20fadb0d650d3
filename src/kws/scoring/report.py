"""The plain-text report of a scoring result (:func:`kws.scoring.summary.summarize`)."""

from __future__ import annotations


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _per_class_lines(per_class: dict) -> list[str]:
    width = max([len(k) for k in per_class] + [5])
    out = [f"  {'class':<{width}}  {'recall':>7}  {'n':>5}  95 % CI"]
    for label, c in per_class.items():
        out.append(f"  {label:<{width}}  {_pct(c['recall']):>5} %  {c['n']:>5}  "
                   f"{_pct(c['ci95'][0])}-{_pct(c['ci95'][1])} %")
    return out


def _speed_lines(result: dict) -> list[str]:
    out = []
    lat = result["latency_ms"]
    if lat["p50"] is not None:
        out.append(f"latency   median {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms per clip (decode + predict)")
    if result.get("clips_per_s"):
        how = f" ({result['workers']} workers, batches of {result['batch']})" if "workers" in result else ""
        out.append(f"speed     {result['clips_per_s']:.0f} clips/s{how}")
        if result.get("clips_per_s_scoring"):
            out.append(f"          {result['clips_per_s_scoring']:.0f} clips/s once started "
                       f"(start-up {result['startup_s']:.1f} s of {result['seconds']:.1f} s)")
    return out


def format_report(result: dict, title: str = "", top: int = 10) -> str:
    """Plain-text report of a scoring result: accuracy, per-class recall, confusions, errors, speed."""
    lo, hi = result["ci95"]
    out = [title] if title else []
    out.append(f"clips     {result['n']}")
    out.append(f"accuracy  {_pct(result['accuracy'])} %  ({result['correct']}/{result['n']}; "
               f"95 % CI {_pct(lo)}-{_pct(hi)} %, Wilson)")
    out.append("per-class recall:")
    out += _per_class_lines(result["per_class"])
    if result["confusions"]:
        out.append("top confusions (true → predicted: count):")
        out += [f"  {c['true']} → {c['predicted']}: {c['count']}" for c in result["confusions"][:top]]
    out.append(f"errors    {len(result['errors'])}")
    out += [f"  {e['file']}: {e['message']}" for e in result["errors"][:top]]
    if len(result["errors"]) > top:
        out.append(f"  ... and {len(result['errors']) - top} more")
    out += _speed_lines(result)
    return "\n".join(out)
