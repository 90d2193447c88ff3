' answers: b
FUNCTION stop_here()
  TALK "stopping"
  END
END FUNCTION
HEAR choice AS "a", "b"
TALK "chose " & choice
IF choice = "b" THEN
  CALL stop_here
END IF
TALK "not reached"
