"""Samples read at scrape time (gbmedia/metrics.py): plain values, and labelled series."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gbmedia.metrics import Metrics, Sample


def scrape(metrics: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        f.name: [(s.labels, s.value) for s in f.samples]
        for f in text_string_to_metric_families(metrics.render().decode())
    }


def test_labelled_samples_of_one_name_form_one_family():
    metrics = Metrics("node-1", "local")
    metrics.watch(
        lambda: [
            Sample("gbmedia_track_bits_per_second", "Bitrate", 1000.0, labels=(("track", "TR_a"), ("kind", "audio"))),
            Sample("gbmedia_track_bits_per_second", "Bitrate", 2000.0, labels=(("track", "TR_b"), ("kind", "video"))),
            Sample("gbmedia_rooms", "Rooms", 3),
            Sample("gbmedia_packets_total", "Packets", 7, counter=True),
            Sample("gbmedia_bytes_total", "Bytes", 9, counter=True, labels=(("kind", "audio"),)),
        ]
    )
    families = scrape(metrics)
    assert families["gbmedia_track_bits_per_second"] == [
        ({"track": "TR_a", "kind": "audio"}, 1000.0),
        ({"track": "TR_b", "kind": "video"}, 2000.0),
    ]
    assert families["gbmedia_rooms"] == [({}, 3.0)]
    assert families["gbmedia_packets"] == [({}, 7.0)]
    assert families["gbmedia_bytes"] == [({"kind": "audio"}, 9.0)]


@pytest.mark.parametrize(
    "second",
    [
        Sample("gbmedia_x", "X", 2, labels=(("other", "b"),)),  # other label names
        Sample("gbmedia_x", "X", 2),  # no labels where the first had some
        Sample("gbmedia_x", "X", 2, counter=True, labels=(("track", "b"),)),  # a counter among gauges
    ],
)
def test_samples_of_one_name_that_disagree_fail_the_scrape(second: Sample):
    metrics = Metrics("node-1", "local")
    metrics.watch(lambda: [Sample("gbmedia_x", "X", 1, labels=(("track", "a"),)), second])
    with pytest.raises(ValueError, match="gbmedia_x"):
        metrics.render()


def test_an_unlabelled_name_given_twice_fails_the_scrape():
    metrics = Metrics("node-1", "local")
    metrics.watch(lambda: [Sample("gbmedia_y", "Y", 1), Sample("gbmedia_y", "Y", 2)])
    with pytest.raises(ValueError, match="gbmedia_y"):
        metrics.render()
