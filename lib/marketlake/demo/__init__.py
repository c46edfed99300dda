"""A synthetic shop of any size, written as raw files the way a shop's tracking drops them, with the truth
planted in it written beside, so that tests can measure how much of that truth each job recovers.

`generate_shop(spark, spec, out_dir)` writes::

    out_dir/
      events/date=YYYY-MM-DD/part-NNNNN.json   newline-delimited JSON, one file per day and generator task
      users.csv        user_id, signup_date, age, gender, region, email   (email: fake PII, only here)
      items.csv        item_id, category, brand, price, title, active
      truth/
        personas.csv        user_id, persona
        taste_groups.csv    user_id, taste_group, categories ("books|toys": the group's categories)
        bundles.csv         bundle_id, anchor_item_id, item_ids ("i00001|i00007|i00012"), size, rate
        new_items.csv       item_id, category, release_date, release_ts, taste_groups ("0|3": the groups
                            whose categories include the item's category; empty when none)
        experiment.json     the experiment: variants, planned split, base rate, true lift, realised counts
        dirty_counts.json   dirty lines per kind, late events, and the other counts generate_shop returns
        intent_sessions.csv    user_id, session_id, category: the sessions with an intent
        purchase_sessions.csv  user_id, session_id, first_date, last_date, p_purchase: each user's true
                            purchase propensity, one row per session that may hold a purchase
        dirty/date=YYYY-MM-DD/part-NNNNN.json   one JSON line per dirty line: kind, reason, event_id,
                            user_id, file (the events file holding it, relative to out_dir), raw (the line)

Events. Each line is one JSON object with `event_id` (24 hex digits), `user_id` ("u000123"), `item_id`
("i00042"), `event_type` (view, click, add_to_cart, purchase, exposure), `ts` (ISO-8601 in the user's zone,
milliseconds, e.g. "2024-06-01T10:15:00.123+02:00"; zones +00:00, Z, +01:00, +02:00, -05:00), `session_id`,
`order_id` (purchases), `quantity` (add_to_cart and purchase, >= 1), `price` (list price on views, clicks
and carts; the paid unit price on purchases, sometimes discounted), `channel` (web, app, email, ads),
`campaign_id` (email and ads sessions), and `experiment_id`, `variant` on exposures (whose item_id is the
first item viewed in that session). A field without a value is left out of the line (no explicit nulls).
Events span `spec.days` days ending on `spec.end_date`; their number is within about 1% of `spec.events`
(`events` in the counts, dirty lines included; `events` = `valid_events` + `dirty`).
A file's date is the UTC date on which the line arrived: the UTC date of `ts` for most lines, the next day
for late events (about 0.5% of clean events), and for dirty lines see below. Within a file lines are in
arrival order. `NNNNN` is the generator task (a fixed range of users); the number of tasks follows from
the spec alone (about one per 250,000 events, at least 2), so the same spec gives the same files, byte for
byte. Every user's events come from a random stream seeded by (seed, user index), so they do not depend
on how users are grouped into tasks.

Behaviour. Users visit in sessions (one `session_id`). A session views a few items; some views are
clicked, some clicks added to the cart; a converting session ends with one order (`order_id`) with a
purchase line per cart item (quantity = the cart's quantity, price = list price or 5-20% less). Items come
mostly (85%) from the user's taste group's categories, by popularity within a category.

Truth:

- personas.csv — every user has one of five personas with distinct recency, frequency, spend and
  browse-to-buy behaviour (`PERSONAS`; shares 15/25/15/20/25%): champions (at least 4 orders, about 17 in
  30 days, large baskets, few views per order, active in the last 2 days), loyal (at least 2 orders, about
  5, active in the last 4 days), new (signed up in the last fifth of the window, few events, at least one
  order), at_risk (at least one order, 2-3 on average, all in the first 40% of the window, silent since) and
  window_shoppers (long browsing sessions, few clicks, abandoned carts, never an order). At the demo scale,
  KMeans (k=5) on log1p-scaled, standardised recency, frequency, monetary, views, clicks, carts,
  purchases, ctr and purchase rate recovers them with an adjusted Rand index of about 0.98 (the
  lowest-cost run of a few seeds; single runs can stop in a local optimum).
- taste_groups.csv — users in a group view and buy mostly (85% of picks) items of the group's categories.
- intent_sessions.csv — `intent_share` of the candidate sessions (10% by default) have an intent: all
  their picks come from one category, drawn uniformly whatever the user's taste, by popularity within it
  (an unreleased pick is then made again in the same category). From a random stream of their own
  (`INTENT_STREAM`): with `intent_share` 0 the shop is the one without intent; with it, the timing,
  clicks, carts and conversion of every session are drawn as before and only the intent sessions' items
  change (and, where that changes a bundle, which sessions fit the user's budget). Lists the kept ones.
- bundles.csv — 2-3 items of one category; when an order contains the anchor (first item), the other
  items are added to the same order with probability `rate` (as an add_to_cart and a purchase), so the
  share of anchor orders holding the whole bundle is about `rate` (a little more from organic purchases).
- new_items.csv — `new_item_share` of the items (10% by default; items.csv keeps its columns and lists
  them like the others, active) are released during the window: active items outside bundles and below
  their category's two most popular. Most become available at midnight UTC of a uniform day from the
  second day to the last (`release_date`; `release_ts` is the instant): a session starting before it never
  picks the item — such a pick is made again, by popularity, among the established items of the same
  category — and from then on it is picked like any item of its popularity (no novelty boost), so mostly
  by the taste groups of its category (`taste_groups`). A fifth of them (at least 2) are released at 23:00
  UTC on the last day, after the last session starts, so they have no events by the run date: truly cold
  items for a recommender, beside new items with a few events (released in the last days) and many. The
  release draws use random streams of their own: with `new_item_share` 0 the shop is exactly the one
  without new items, and with it only the users whose picks fell on an unreleased item change.
- experiment.json — one experiment over the last 14 days: 70% of the users with a session then are exposed
  once, at the start of their first session in the window (later sessions may repeat the exposure with the
  same variant); variant treatment with the planned probability 0.5. The metric is session conversion: the
  session of a user's first exposure (same `session_id`) holds a purchase. Treatment multiplies each user's
  conversion probability by 1 + `true_relative_lift`; `base_conversion_rate` is the expected control rate
  of the exposed population. Events of that session are never made dirty. `realised` gives the counts.
- purchase_sessions.csv — the planted purchase propensity: a row per session of the user's that can
  convert, with the UTC days its start can fall on (`first_date` to `last_date`, inclusive) and its
  conversion probability (`p_purchase`: the persona's, times 1 + lift on a treatment user's first
  exposure, and 1 for a forced order). Sessions fall on independent uniform days of their ranges and
  convert independently, so a user buys on some day of [a, b] with probability
  1 - prod (1 - p_purchase * |[a, b] & [first_date, last_date]| / (last_date - first_date + 1)):
  `true_purchase_propensity(sessions, users, start, end)` (`marketlake.demo.truth`) gives it per user,
  0 for users without rows. It is the generator's probability integrated over the day and conversion
  draws, given each user's sessions (how many, which ones forced or exposed): for users who drew
  exposure, each session's side of the experiment's start and the first exposure's day (the day of its
  exposure event; later sessions in the window fall on or after it) are part of that structure, since
  the experiment depends on them. At the scale of tests/test_generate_truth.py (3,000 users, 60 days)
  the number of buyers in a window is within binomial error of the summed propensity, per decile too,
  and the propensity ranks buyers with an AUC of 0.8 (one day) to 0.997 (the last week). Per session it
  runs a little high: a converting session has more events and fits the user's event budget less
  often, so kept sessions without a forced order convert at 0.84 (at_risk) to 0.97 (champions) of
  `p_purchase`. Realised purchases in the clean events fall a little short where a purchase line was
  made dirty.
- Dirty lines, about `dirty_rate` of all lines, in equal parts (`DIRTY_KINDS`, with the quarantine reason):
  malformed_json (truncated JSON or an HTML error page; `malformed_json`), missing_field (user_id,
  item_id, event_type or ts left out; `missing:<field>`), unknown_event_type (`unknown_event_type:<type>`),
  negative_price (`negative_price`), unparseable_ts (`unparseable_ts`), future_ts (a ts after end_date;
  `future_ts`) — each of these replaces a clean event and keeps its file date — and exact_resend (the
  same line again; `exact_duplicate`, to be dropped as a duplicate rather than quarantined) and
  conflicting_duplicate (the same event_id with a slightly earlier ts, a higher price or another channel;
  `conflicting_duplicate`) — each of these adds a line that arrives seconds to minutes after the clean
  original, or a day later (then in the next day's file). The original always arrives first.

The driver builds only the small tables (items, users, personas, per-user event budgets); events are made
by `mapInArrow` tasks over user ranges and written by Spark, so memory stays bounded at any size.

Modules: `spec` (ShopSpec, the vocabulary of the lines, the personas and the experiment), `shop_catalog`
(driver side: items, bundles, new items and their releases, users with their taste groups and budgets), `behaviour` (one user's
sessions and events, and its planted purchase sessions), `dirty` (the planted bad records), `rows` (the
generator tasks: a user's rows and counts as Arrow batches), `write` (`generate_shop`: Spark renders and
writes the lines, then the files are put in place) and `truth` (`true_purchase_propensity`, from the
truth files). This is demo and test code: of marketlake, only the `generate` job
(`marketlake.jobs.generate`) imports it; production modules never do.
"""

from marketlake.demo.spec import DIRTY_KINDS, PERSONAS, ShopSpec
from marketlake.demo.truth import true_purchase_propensity
from marketlake.demo.write import generate_shop, move_parts, part_name

__all__ = [
    "DIRTY_KINDS",
    "PERSONAS",
    "ShopSpec",
    "generate_shop",
    "move_parts",
    "part_name",
    "true_purchase_propensity",
]
