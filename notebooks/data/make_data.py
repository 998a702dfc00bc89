"""Write the demo data sets (deterministic: fixed seeds, so the committed CSVs never change).

    python notebooks/data/make_data.py     # rewrites sales.csv, energy.csv and houses.csv next to this file
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent


def sales(seed: int = 7) -> pd.DataFrame:
    """Orders of a small online shop, 2023-2024: customers join over time and buy again less often."""
    rng = np.random.default_rng(seed)
    products = {"notebook": 4.5, "pen set": 12.0, "backpack": 49.0, "desk lamp": 35.0, "planner": 18.0, "mug": 9.5, "headphones": 79.0}
    regions = ["north", "south", "east", "west"]
    months = pd.period_range("2023-01", "2024-12", freq="M")
    rows = []
    customer = 0
    for m_index, month in enumerate(months):
        newcomers = int(40 + 3 * m_index + rng.integers(0, 15))
        for _ in range(newcomers):
            customer += 1
            region = regions[rng.choice(4, p=[0.35, 0.25, 0.25, 0.15])]
            loyalty = rng.uniform(0.15, 0.6)  # chance of buying again in each later month, decaying
            for later, order_month in enumerate(months[m_index:]):
                if later and rng.random() > loyalty * 0.85**later:
                    continue
                day = int(rng.integers(1, order_month.days_in_month + 1))
                product = rng.choice(list(products))
                rows.append({
                    "order_date": f"{order_month.year}-{order_month.month:02d}-{day:02d}",
                    "customer_id": f"C{customer:05d}",
                    "region": region,
                    "product": product,
                    "quantity": int(rng.integers(1, 4)),
                    "unit_price": products[product],
                })
    return pd.DataFrame(rows).sort_values(["order_date", "customer_id"]).reset_index(drop=True)


def energy(seed: int = 11) -> pd.DataFrame:
    """Hourly electricity load of a building in 2024: daily and weekly cycles, heating in winter, a few outages."""
    rng = np.random.default_rng(seed)
    hours = pd.date_range("2024-01-01", "2024-12-31 23:00", freq="h")
    day_of_year = hours.day_of_year.to_numpy()
    hour = hours.hour.to_numpy()
    weekend = hours.day_of_week.to_numpy() >= 5
    temp = 10 - 9 * np.cos(2 * np.pi * (day_of_year - 15) / 366) + 4 * np.sin(2 * np.pi * (hour - 9) / 24) + rng.normal(0, 1.5, len(hours))
    office = np.where((hour >= 8) & (hour < 19) & ~weekend, 1.0, 0.0)
    load = 40 + 55 * office + 1.8 * np.clip(15 - temp, 0, None) + rng.normal(0, 4, len(hours))
    outages = rng.choice(len(hours), 6, replace=False)
    load[outages] = 0.0
    return pd.DataFrame({"timestamp": hours.strftime("%Y-%m-%d %H:%M"), "load_kw": load.round(2), "temp_c": temp.round(2)})


def houses(seed: int = 5, rows: int = 400) -> pd.DataFrame:
    """House sales: price from size, rooms, age, distance to the centre and a garden, plus noise and one useless feature."""
    rng = np.random.default_rng(seed)
    size = rng.normal(110, 35, rows).clip(30, 300)
    rooms = np.clip(np.round(size / 28 + rng.normal(0, 0.8, rows)), 1, 9)
    age = rng.uniform(0, 80, rows)
    distance = rng.gamma(2.0, 4.0, rows)
    garden = (rng.random(rows) < 0.4).astype(int)
    noise_feature = rng.normal(0, 1, rows)  # unrelated to the price: lasso should drop it
    price = 60 + 2.1 * size + 8 * rooms - 0.9 * age - 4.5 * distance + 25 * garden + rng.normal(0, 20, rows)
    return pd.DataFrame({"size_m2": size.round(1), "rooms": rooms.astype(int), "age_years": age.round(1), "distance_km": distance.round(2),
                         "garden": garden, "noise": noise_feature.round(3), "price": price.round(1)})


if __name__ == "__main__":
    sales().to_csv(HERE / "sales.csv", index=False)
    energy().to_csv(HERE / "energy.csv", index=False)
    houses().to_csv(HERE / "houses.csv", index=False)
    print("wrote sales.csv, energy.csv and houses.csv in", HERE)
