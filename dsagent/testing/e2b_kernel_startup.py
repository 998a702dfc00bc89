"""IPython startup file of the loopback E2B server's kernels: the result types E2B's template adds.

Copied into ``/root/.ipython/profile_default/startup/`` of the loopback
sandbox (where E2B's code-interpreter template keeps its own startup scripts)
and run by every kernel at start. Written here from what the template does
(``template/startup_scripts`` in e2b-dev/code-interpreter), not copied:

- ``e2b/data``: a pandas DataFrame's columns as lists (``to_dict(orient="list")``,
  timestamps as ISO text);
- ``e2b/chart``: the elements of a matplotlib figure (line, scatter, bar and pie
  axes; several axes make a ``superchart``; anything else ``unknown``);
- ``application/json`` for dicts and lists (through orjson, numpy values and
  non-str keys included), with ``{"expanded": True}`` metadata;
- ``PIL.Image.Image.save(path)`` also displays the image, and PIL's viewer is a no-op.

Each formatter looks at ``sys.modules`` first, so displaying an int never imports pandas or matplotlib.
Everything is defined inside one function: a startup file runs in the user's namespace.
"""

def _e2b_loopback_startup():
    import sys

    from IPython import get_ipython
    from IPython.core.formatters import BaseFormatter, JSONFormatter
    from traitlets import ObjectName, Unicode

    class _E2BDataFormatter(BaseFormatter):
        format_type = Unicode("e2b/data")
        print_method = ObjectName("_repr_e2b_data_")
        _return_type = (dict, str)

        def __call__(self, obj):
            pandas = sys.modules.get("pandas")
            if pandas is None or not isinstance(obj, pandas.DataFrame):
                return super().__call__(obj)
            columns = obj.to_dict(orient="list")
            return {
                str(name): [v.isoformat() if isinstance(v, pandas.Timestamp) else v for v in values]
                for name, values in columns.items()
            }

    def _number(value):
        try:
            return float(value)
        except (TypeError, ValueError):
            return str(value)

    def _line_label(line):
        label = line.get_label()  # matplotlib names unlabelled lines "_child<n>"; E2B calls them "Line <n>"
        return f"Line {label[6:]}" if label.startswith("_child") else label

    def _axis_info(ax):
        return {
            "title": ax.get_title(),
            "x_label": ax.get_xlabel() or None,
            "y_label": ax.get_ylabel() or None,
            "x_unit": None,
            "y_unit": None,
        }

    def _ticks(ax):
        return {
            "x_ticks": [_number(t) for t in ax.get_xticks()],
            "x_tick_labels": [label.get_text() for label in ax.get_xticklabels()],
            "x_scale": ax.get_xscale(),
            "y_ticks": [_number(t) for t in ax.get_yticks()],
            "y_tick_labels": [label.get_text() for label in ax.get_yticklabels()],
            "y_scale": ax.get_yscale(),
        }

    def _chart_of_axes(ax):
        from matplotlib.collections import PathCollection
        from matplotlib.lines import Line2D
        from matplotlib.patches import Rectangle, Wedge
        from matplotlib.text import Text

        drawn = [child for child in ax._children if not isinstance(child, Text)]
        if drawn and all(isinstance(a, Line2D) for a in drawn):
            elements = [
                {"label": _line_label(line), "points": [[_number(x), _number(y)] for x, y in zip(line.get_xdata(), line.get_ydata())]}
                for line in drawn
            ]
            return {"type": "line", **_axis_info(ax), **_ticks(ax), "elements": elements}
        if drawn and all(isinstance(a, PathCollection) for a in drawn):
            elements = [
                {"label": c.get_label(), "points": [[_number(x), _number(y)] for x, y in c.get_offsets()]}
                for c in drawn
            ]
            return {"type": "scatter", **_axis_info(ax), **_ticks(ax), "elements": elements}
        if drawn and all(isinstance(a, Wedge) for a in drawn):
            elements = [{"label": w.get_label(), "angle": abs(w.theta2 - w.theta1), "radius": w.r} for w in drawn]
            return {"type": "pie", "title": ax.get_title(), "elements": elements}
        if drawn and all(isinstance(a, Rectangle) for a in drawn):
            labels = [label.get_text() for label in ax.get_xticklabels()]
            elements = []
            for index, bar in enumerate(drawn):
                label = labels[index] if index < len(labels) else str(index)
                elements.append({"label": label, "group": bar.get_label() or "", "value": _number(bar.get_height())})
            return {"type": "bar", **_axis_info(ax), "elements": elements}
        return {"type": "unknown", "title": ax.get_title(), "elements": []}

    class _E2BChartFormatter(BaseFormatter):
        format_type = Unicode("e2b/chart")
        print_method = ObjectName("_repr_e2b_chart_")
        _return_type = (dict, str)

        def __call__(self, obj):
            if sys.modules.get("matplotlib") is None:
                return super().__call__(obj)
            from matplotlib.figure import Figure

            if not isinstance(obj, Figure):
                return super().__call__(obj)
            try:
                axes = [ax for ax in obj.get_axes() if ax.has_data()]
                if not axes:
                    return {}
                if len(obj.get_axes()) > 1:
                    return {"type": "superchart", "title": obj.get_suptitle(), "elements": [_chart_of_axes(ax) for ax in obj.get_axes()]}
                return _chart_of_axes(axes[0])
            except Exception:
                return {}

    class _E2BJSONFormatter(JSONFormatter):
        def __call__(self, obj):
            if isinstance(obj, (list, dict)):
                try:
                    import orjson

                    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
                    return orjson.loads(orjson.dumps(obj, option=options)), {"expanded": True}
                except (ImportError, TypeError):
                    pass
            return super().__call__(obj)

    def _install():
        ip = get_ipython()
        if ip is None:
            return
        formatters = ip.display_formatter.formatters
        formatters["e2b/data"] = _E2BDataFormatter(parent=ip.display_formatter)
        formatters["e2b/chart"] = _E2BChartFormatter(parent=ip.display_formatter)
        formatters["application/json"] = _E2BJSONFormatter(parent=ip.display_formatter)
        try:
            from PIL import Image, ImageShow
        except ImportError:
            return
        ImageShow.UnixViewer.show_file = lambda self, path, **options: 0  # no display in a sandbox
        original_save = Image.Image.save

        def save(image, fp, format=None, **params):
            if isinstance(fp, str):
                from IPython.display import display

                display(image)
            return original_save(image, fp, format, **params)

        Image.Image.save = save

    _install()


_e2b_loopback_startup()
del _e2b_loopback_startup
