"""Sound events, for finished files and live streams alike (:mod:`.stream`): settings
(:mod:`.settings`), the level envelope (:mod:`.envelope`), hysteresis over scores
(:mod:`.tracker`) and tables of finished events (:mod:`.table`)."""

from escnet.deploy.events.settings import CLIP_DEFAULTS, DEFAULTS, FRAME_DEFAULTS, EventSettings
from escnet.deploy.events.stream import HopScore, Stream, Update, detect_events, stream_file
from escnet.deploy.events.table import events_csv, write_events
from escnet.deploy.events.tracker import Event, EventMessage, EventTracker, events_of

__all__ = ["CLIP_DEFAULTS", "DEFAULTS", "FRAME_DEFAULTS", "Event",
           "EventMessage", "EventSettings", "EventTracker", "HopScore", "Stream",
           "Update", "detect_events", "events_csv", "events_of", "stream_file", "write_events"]
