"""Write the demo notebooks from the cell sources below (so they stay reviewable as plain text).

    python notebooks/build_notebooks.py      # rewrites notebooks/*.ipynb, without outputs

Each notebook has a cell tagged ``parameters``; run one with
``dsagent run notebooks/sales_cohorts.ipynb -p region north`` or list its
parameters with ``dsagent inspect notebooks/sales_cohorts.ipynb``.
"""

from __future__ import annotations

from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}

SALES = [
    ("md", "# Sales and customer cohorts\n\nMonthly revenue by region, the best-selling products, and how many customers of each monthly cohort come back."),
    ("params", 'data_path = "data/sales.csv"  # orders CSV (order_date, customer_id, region, product, quantity, unit_price)\n'
               'region = "all"  # north, south, east, west or all\n'
               'start_month = "2023-01"  # first month included (YYYY-MM)\n'
               "top_n = 5  # products shown in the ranking\n"
               "cohort_months = 12  # months after the first order tracked in the retention table"),
    ("code", "%matplotlib inline\nimport matplotlib.pyplot as plt\nimport numpy as np\nimport pandas as pd\n\n"
             "orders = pd.read_csv(data_path, parse_dates=['order_date'])\n"
             "orders = orders[orders['order_date'] >= pd.Timestamp(start_month + '-01')]\n"
             "if region != 'all':\n    orders = orders[orders['region'] == region]\n"
             "if orders.empty:\n    raise ValueError(f'no orders for region={region!r} from {start_month}')\n"
             "orders['revenue'] = orders['quantity'] * orders['unit_price']\n"
             "orders['month'] = orders['order_date'].dt.to_period('M')\n"
             "print(f\"{len(orders):,} orders from {orders['customer_id'].nunique():,} customers, revenue {orders['revenue'].sum():,.0f}\")"),
    ("md", "## Revenue by month and region"),
    ("code", "monthly = orders.pivot_table(index='month', columns='region', values='revenue', aggfunc='sum').fillna(0)\n"
             "ax = monthly.plot(kind='area', stacked=True, figsize=(9, 4), alpha=0.85)\n"
             "ax.set_title('Monthly revenue by region')\nax.set_xlabel('')\nax.set_ylabel('revenue')\nplt.show()"),
    ("md", "## Top products"),
    ("code", "products = (orders.groupby('product')\n"
             "    .agg(revenue=('revenue', 'sum'), units=('quantity', 'sum'), customers=('customer_id', 'nunique'))\n"
             "    .sort_values('revenue', ascending=False))\n"
             "top = products.head(top_n)\n"
             "ax = top['revenue'][::-1].plot(kind='barh', figsize=(7, 3.5), color='tab:blue')\n"
             "ax.set_title(f'Top {top_n} products by revenue')\nax.set_xlabel('revenue')\nplt.show()\ntop"),
    ("md", "## Cohort retention\n\nShare of each month's new customers who order again *k* months later."),
    ("code", "first = orders.groupby('customer_id')['month'].min().rename('cohort')\n"
             "orders = orders.join(first, on='customer_id')\n"
             "orders['age'] = (orders['month'] - orders['cohort']).apply(lambda offset: offset.n)\n"
             "active = orders[orders['age'] < cohort_months].groupby(['cohort', 'age'])['customer_id'].nunique().unstack(fill_value=0)\n"
             "retention = active.div(active[0], axis=0)\n"
             "# months after the end of the data were never observed: blank, not zero\n"
             "observable = (orders['month'].max() - retention.index).map(lambda offset: offset.n)\n"
             "retention = retention.where(np.arange(retention.shape[1])[None, :] <= np.asarray(observable)[:, None])\n"
             "fig, ax = plt.subplots(figsize=(9, 5))\n"
             "cmap = plt.get_cmap('viridis').with_extremes(bad='whitesmoke')\n"
             "image = ax.imshow(np.ma.masked_invalid(retention.to_numpy()), aspect='auto', cmap=cmap, vmin=0, vmax=np.nanmax(retention.iloc[:, 1:].to_numpy()))\n"
             "ax.set_yticks(range(len(retention)), [str(p) for p in retention.index], fontsize=7)\n"
             "ax.set_xlabel('months since first order')\nax.set_title('Customers who came back, by monthly cohort')\n"
             "fig.colorbar(image, ax=ax, label='share of cohort')\nplt.show()\n"
             "retention.to_csv('cohort_retention.csv', float_format='%.3f')\n"
             "print('mean retention after 1, 3, 6 months:', [round(float(retention[k].mean()), 3) for k in (1, 3, 6) if k in retention])"),
]

ENERGY = [
    ("md", "# Building energy load\n\nHourly load resampled to a chosen period: trend, rolling mean, the daily profile, and outages."),
    ("params", 'data_path = "data/energy.csv"  # hourly CSV with timestamp, load_kw, temp_c\n'
               'resample = "D"  # pandas offset alias: h, D, W, ME ...\n'
               "rolling_window = 7  # periods in the rolling mean\n"
               'column = "load_kw"  # load_kw or temp_c\n'
               "outage_threshold = 5.0  # hourly values below this count as outages"),
    ("code", "%matplotlib inline\nimport matplotlib.pyplot as plt\nimport pandas as pd\n\n"
             "hourly = pd.read_csv(data_path, parse_dates=['timestamp'], index_col='timestamp')\n"
             "if column not in hourly:\n    raise KeyError(f'no column {column!r}; the data has {list(hourly.columns)}')\n"
             "series = hourly[column]\n"
             "resampled = series.resample(resample).mean()\n"
             "print(f'{len(series):,} hourly values -> {len(resampled):,} periods of {resample!r}')"),
    ("code", "fig, ax = plt.subplots(figsize=(10, 4))\n"
             "resampled.plot(ax=ax, label=f'mean per {resample}', alpha=0.6)\n"
             "resampled.rolling(rolling_window, min_periods=1).mean().plot(ax=ax, label=f'{rolling_window}-period rolling mean', linewidth=2)\n"
             "ax.set_title(f'{column} resampled to {resample!r}')\nax.legend()\nplt.show()"),
    ("code", "profile = series.groupby([series.index.day_of_week >= 5, series.index.hour]).mean().unstack(0)\n"
             "profile.columns = ['weekday', 'weekend']\n"
             "ax = profile.plot(figsize=(8, 3.5), marker='o', markersize=3)\n"
             "ax.set_xlabel('hour of day')\nax.set_ylabel(column)\nax.set_title('Average daily profile')\nplt.show()"),
    ("code", "monthly = hourly.resample('ME').agg({'load_kw': 'mean', 'temp_c': 'mean'})\n"
             "fig, ax = plt.subplots(figsize=(6, 4))\n"
             "ax.scatter(monthly['temp_c'], monthly['load_kw'])\n"
             "for when, row in monthly.iterrows():\n    ax.annotate(when.strftime('%b'), (row['temp_c'], row['load_kw']), fontsize=8)\n"
             "ax.set_xlabel('mean temperature (C)')\nax.set_ylabel('mean load (kW)')\nax.set_title('Heating: colder months draw more')\nplt.show()"),
    ("code", "outages = hourly[hourly['load_kw'] < outage_threshold]\n"
             "print(f'{len(outages)} outage hours below {outage_threshold} kW')\n"
             "outages"),
]

MODEL = [
    ("md", "# House prices: a regularized linear model\n\nFit ridge or lasso regression with numpy alone on the shipped `data/houses.csv`, "
           "cross-validate on the training rows, and report metrics on held-out rows."),
    ("params", 'data_path = "data/houses.csv"  # CSV of numeric features and a price column\n'
               'model = "ridge"  # ridge or lasso\n'
               "alpha = 1.0  # regularization strength\n"
               "test_size = 0.25  # share of rows held out\n"
               "cv_folds = 5  # folds of the cross-validation on the training rows\n"
               "random_state = 0"),
    ("code", "%matplotlib inline\nimport matplotlib.pyplot as plt\nimport numpy as np\nimport pandas as pd\n\n"
             "data = pd.read_csv(data_path)\nX, y = data.drop(columns='price'), data['price']\n"
             "order = np.random.default_rng(random_state).permutation(len(data))\n"
             "held_out = int(round(len(data) * test_size))\n"
             "test_rows, train_rows = order[:held_out], order[held_out:]\n"
             "X_train, X_test, y_train, y_test = X.iloc[train_rows], X.iloc[test_rows], y.iloc[train_rows], y.iloc[test_rows]\n"
             "print(f'{len(X_train)} training rows, {len(X_test)} test rows, {X.shape[1]} features')"),
    ("code", "def fit(X, y):\n"
             "    \"\"\"Coefficients on standardized features (ridge: closed form; lasso: coordinate descent).\"\"\"\n"
             "    mean, scale = X.mean(), X.std().replace(0, 1)\n"
             "    Z, target = ((X - mean) / scale).to_numpy(), (y - y.mean()).to_numpy()\n"
             "    n, k = Z.shape\n"
             "    if model == 'ridge':\n"
             "        w = np.linalg.solve(Z.T @ Z + alpha * n * np.eye(k), Z.T @ target)\n"
             "    elif model == 'lasso':\n"
             "        w = np.zeros(k)\n"
             "        for _ in range(200):\n"
             "            for j in range(k):\n"
             "                rho = Z[:, j] @ (target - Z @ w + Z[:, j] * w[j]) / n\n"
             "                w[j] = np.sign(rho) * max(abs(rho) - alpha, 0) / (Z[:, j] @ Z[:, j] / n)\n"
             "    else:\n"
             "        raise ValueError(f'unknown model {model!r}; pick ridge or lasso')\n"
             "    return lambda X_new: ((X_new - mean) / scale).to_numpy() @ w + y.mean(), pd.Series(w, index=X.columns)\n\n"
             "def scores(true, predicted):\n"
             "    residual = np.asarray(true) - predicted\n"
             "    return {'R2': 1 - (residual ** 2).sum() / ((true - true.mean()) ** 2).sum(), 'MAE': np.abs(residual).mean(),\n"
             "            'RMSE': float(np.sqrt((residual ** 2).mean()))}\n\n"
             "predict, weights = fit(X_train, y_train)\n"
             "folds = np.array_split(np.arange(len(X_train)), cv_folds)\n"
             "cv = np.array([scores(y_train.iloc[f], fit(X_train.drop(X_train.index[f]), y_train.drop(y_train.index[f]))[0](X_train.iloc[f]))['R2']\n"
             "               for f in folds])\n"
             "metrics = pd.DataFrame({'train': scores(y_train, predict(X_train)), 'test': scores(y_test, predict(X_test))}).T\n"
             "metrics.loc['cv (mean)', 'R2'] = cv.mean()\nmetrics.loc['cv (std)', 'R2'] = cv.std()\n"
             "metrics.round(3)"),
    ("code", "predicted = predict(X_test)\nfig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))\n"
             "left.scatter(y_test, predicted, alpha=0.6)\nlow, high = y.min(), y.max()\nleft.plot([low, high], [low, high], 'k--', linewidth=1)\n"
             "left.set_xlabel('actual price')\nleft.set_ylabel('predicted')\nleft.set_title(f\"{model}: test R2 = {scores(y_test, predicted)['R2']:.2f}\")\n"
             "right.hist(y_test - predicted, bins=20, color='tab:orange')\nright.set_title('residuals (actual - predicted)')\nplt.tight_layout()\nplt.show()"),
    ("code", "ax = weights.reindex(weights.abs().sort_values().index).plot(kind='barh', figsize=(7, 4), color='tab:green')\n"
             "ax.set_title('coefficients (standardized features)')\nplt.show()"),
]

NOTEBOOKS = {"sales_cohorts.ipynb": SALES, "energy_timeseries.ipynb": ENERGY, "model_fit.ipynb": MODEL}


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": KERNELSPEC, "language_info": {"name": "python"}})
    for kind, source in cells:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
            continue
        cell = nbformat.v4.new_code_cell(source)
        if kind == "params":
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    for index, cell in enumerate(nb.cells):
        cell.id = f"cell-{index}"  # stable ids: rebuilding does not change the files
    return nb


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(cells), HERE / name)
        print("wrote", HERE / name)
