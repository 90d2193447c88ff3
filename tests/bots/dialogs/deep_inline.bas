' answers:
FUNCTION down(n)
  RETURN down(n + 1) + 1
END FUNCTION
TALK "going down"
TALK down(0)
