' A media bot in a meeting: it joins the room "standup" as a participant, shows the
' agenda on a slide and says good morning, draws the chart the person types, shows a
' participant's camera through the filter they choose, and leaves when told.
' Everyone in the room sees and hears it like any participant (web/room shows its tile).
JOIN ROOM "standup" AS "Standup Bot"
SHOW SLIDE "Standup", "Yesterday", "Today", "Blockers"
SAY "Good morning. The standup starts now."
TALK "The agenda is up. Type the signups of Monday, Tuesday and Wednesday (like 3 5 8):"
HEAR answer
values = NEW ARRAY
FOR EACH part IN SPLIT(TRIM(answer), " ")
  IF ISNUMBER(part) THEN
    APPEND values, VAL(part)
  END IF
NEXT
IF UBOUND(values) = 0 THEN values = [0]
SHOW CHART values, "Signups", ["Mon", "Tue", "Wed"]
TALK "Whose camera shall I show? (their name in the room, or none)"
HEAR who
IF LCASE(TRIM(who)) <> "none" THEN
  TALK "With which filter?"
  HEAR effect AS "blur", "sharpen", "edges", "face_blur"
  PROCESS VIDEO OF who WITH effect
  TALK "Showing ${who} with ${effect}."
END IF
TALK "Type bye when the standup ends."
HEAR bye
SHOW CLOCK "Thank you"
PLAY TONE 440
LEAVE ROOM
TALK "I left the room."
