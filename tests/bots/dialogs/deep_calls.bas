' answers:
FUNCTION down(n)
  CALL down(n + 1)
END FUNCTION
TALK "calling"
CALL down(0)
